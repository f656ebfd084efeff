//! WebSocket routing: URL patterns to consumers, matched as Channels' `URLRouter` matches
//! Django's `re_path`.
//!
//! The path is percent-decoded and its leading slashes are stripped, then each pattern is tried
//! in order. A pattern ending in `$` must match the whole path (Django's `fullmatch` for
//! endpoints); any other pattern may match anywhere in it (Django's `search`), so `room/` matches
//! `/room/123/`, exactly as in the seed. Named groups become `url_route` kwargs; unnamed groups
//! become args only when there is no named group, as in Django. `\w` and `\d` are Unicode, as in
//! Python, so `group/(?P<groupID>\w+)/$` routes `/group/组/` and the consumer decides what to do
//! with a group name Channels would reject.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::response::Response;
use regex::Regex;

use crate::consumer::Consumer;
pub use crate::consumer::UrlRoute;
use crate::handshake::{Handshake, start};

/// A compiled `re_path` pattern.
///
/// ```
/// use channels_server::routing::RePath;
/// let route = RePath::new(r"group/(?P<groupID>\w+)/$")?;
/// let m = route.matches("group/42/").unwrap();
/// assert_eq!(m.kwarg("groupID"), Some("42"));
/// assert!(route.matches("group/42/extra").is_none());
/// assert!(RePath::new("room/")?.matches("room/123/").is_some());
/// # Ok::<(), regex::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RePath {
    source: String,
    regex: Regex,
}

impl RePath {
    /// Compiles `pattern` with Django's endpoint semantics.
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        let anchored = if pattern.ends_with('$') {
            // Django's fullmatch: the whole path, whatever alternations the pattern has.
            format!("^(?:{pattern})\\z")
        } else {
            pattern.to_owned()
        };
        Ok(Self {
            source: pattern.to_owned(),
            regex: Regex::new(&anchored)?,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Matches a path whose leading `/` was stripped.
    pub fn matches(&self, path: &str) -> Option<UrlRoute> {
        let caps = self.regex.captures(path)?;
        let names: Vec<&str> = self.regex.capture_names().flatten().collect();
        let mut route = UrlRoute::default();
        if names.is_empty() {
            route.args = caps
                .iter()
                .skip(1)
                .map(|m| m.map_or_else(String::new, |m| m.as_str().to_owned()))
                .collect();
        } else {
            // Exactly as many as there are: the scope keeps them for the connection's life.
            route.kwargs.reserve_exact(names.len());
            for name in names {
                if let Some(m) = caps.name(name) {
                    route.kwargs.push((name.to_owned(), m.as_str().to_owned()));
                }
            }
        }
        Some(route)
    }
}

pub(crate) type StartFuture = Pin<Box<dyn Future<Output = Response> + Send>>;

/// Starts a connection with a fresh consumer; erases the consumer's type.
pub(crate) trait Endpoint: Send + Sync {
    fn start(&self, handshake: Handshake) -> StartFuture;
}

struct Factory<F>(F);

impl<C, F> Endpoint for Factory<F>
where
    C: Consumer,
    F: Fn() -> C + Send + Sync,
{
    fn start(&self, handshake: Handshake) -> StartFuture {
        Box::pin(start((self.0)(), handshake))
    }
}

struct Route {
    pattern: RePath,
    endpoint: Arc<dyn Endpoint>,
}

/// The WebSocket URL patterns (Channels' `websocket_urlpatterns` in a `URLRouter`).
///
/// ```
/// use channels_server::routing::WsRouter;
/// # use channels_server::consumer::{ClientMessage, Close, Consumer, Context};
/// # #[derive(Default)] struct Room;
/// # #[derive(Default)] struct Group;
/// # impl Consumer for Room {
/// #     async fn receive(&mut self, _: &mut Context, _: ClientMessage) -> Result<(), Close> { Ok(()) }
/// #     async fn event(&mut self, _: &mut Context, _: channels_layer::Message) -> Result<(), Close> { Ok(()) }
/// # }
/// # impl Consumer for Group {
/// #     async fn receive(&mut self, _: &mut Context, _: ClientMessage) -> Result<(), Close> { Ok(()) }
/// #     async fn event(&mut self, _: &mut Context, _: channels_layer::Message) -> Result<(), Close> { Ok(()) }
/// # }
/// let routes = WsRouter::new()
///     .route("room/", Room::default)?
///     .route(r"group/(?P<groupID>\w+)/$", Group::default)?;
/// assert!(routes.resolves("/room/123/"));
/// assert!(!routes.resolves("/nowhere/"));
/// # Ok::<(), regex::Error>(())
/// ```
#[derive(Default, Clone)]
pub struct WsRouter {
    routes: Vec<Arc<Route>>,
}

impl fmt::Debug for WsRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.routes.iter().map(|r| r.pattern.as_str()))
            .finish()
    }
}

impl WsRouter {
    /// No routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route; `factory` makes one consumer per connection.
    pub fn route<C, F>(mut self, pattern: &str, factory: F) -> Result<Self, regex::Error>
    where
        C: Consumer,
        F: Fn() -> C + Send + Sync + 'static,
    {
        self.routes.push(Arc::new(Route {
            pattern: RePath::new(pattern)?,
            endpoint: Arc::new(Factory(factory)),
        }));
        Ok(self)
    }

    /// Whether a percent-decoded path has a route.
    pub fn resolves(&self, path: &str) -> bool {
        self.resolve(path).is_some()
    }

    /// The first route matching a percent-decoded path, with its captures.
    pub(crate) fn resolve(&self, path: &str) -> Option<(Arc<dyn Endpoint>, UrlRoute)> {
        let path = path.trim_start_matches('/');
        self.routes.iter().find_map(|route| {
            route
                .pattern
                .matches(path)
                .map(|m| (Arc::clone(&route.endpoint), m))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_semantics_without_dollar() {
        let p = RePath::new("room/").unwrap();
        assert!(p.matches("room/123/").is_some());
        assert!(p.matches("room/").is_some());
        assert!(
            p.matches("chatroom/x").is_some(),
            "Django's search finds it anywhere"
        );
        assert!(p.matches("roo/").is_none());
    }

    #[test]
    fn fullmatch_semantics_with_dollar() {
        let p = RePath::new(r"group/(?P<groupID>\w+)/$").unwrap();
        assert_eq!(
            p.matches("group/abc_1/").unwrap().kwarg("groupID"),
            Some("abc_1")
        );
        assert!(p.matches("xgroup/1/").is_none());
        assert!(p.matches("group/1/2/").is_none());
        assert!(p.matches("group//").is_none());
        assert!(p.matches("group/a-b/").is_none(), "\\w has no hyphen");
        // The whole path must match, as with fullmatch, even with an alternation.
        let alt = RePath::new("a|b$").unwrap();
        assert!(alt.matches("abc").is_none());
        assert!(alt.matches("a").is_some() && alt.matches("b").is_some());
    }

    #[test]
    fn word_characters_are_unicode_as_in_python() {
        let p = RePath::new(r"group/(?P<groupID>\w+)/$").unwrap();
        assert_eq!(p.matches("group/组/").unwrap().kwarg("groupID"), Some("组"));
    }

    #[test]
    fn unnamed_groups_are_args_only_without_named_ones() {
        let p = RePath::new(r"a/(\d+)/(\d+)/$").unwrap();
        let m = p.matches("a/1/2/").unwrap();
        assert_eq!(m.args, ["1", "2"]);
        assert!(m.kwargs.is_empty());
        let p = RePath::new(r"a/(\d+)/(?P<b>\d+)/$").unwrap();
        let m = p.matches("a/1/2/").unwrap();
        assert!(m.args.is_empty());
        assert_eq!(m.kwarg("b"), Some("2"));
    }

    /// A consumer that does nothing, for routes.
    #[derive(Default)]
    struct Idle;

    impl Consumer for Idle {
        async fn receive(
            &mut self,
            _: &mut crate::consumer::Context,
            _: crate::consumer::ClientMessage,
        ) -> Result<(), crate::consumer::Close> {
            Ok(())
        }

        async fn event(
            &mut self,
            _: &mut crate::consumer::Context,
            _: channels_layer::Message,
        ) -> Result<(), crate::consumer::Close> {
            Ok(())
        }
    }

    #[test]
    fn first_matching_route_wins_and_leading_slashes_are_stripped() {
        let routes = WsRouter::new()
            .route("room/", Idle::default)
            .and_then(|r| r.route(r"group/(?P<groupID>\w+)/$", Idle::default))
            .unwrap();
        assert!(routes.resolves("/room/123/"));
        assert!(routes.resolves("//group/1/"));
        assert!(!routes.resolves("/group/1"));
        assert!(!routes.resolves("/"));
    }
}
