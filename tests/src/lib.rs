//! System tests of the workspace; the tests are in this package's `[[test]]` targets, and its
//! one binary runs the server's command line for them.
