//! A RESP3 reader for the pub/sub layer's subscriber, which reads on a connection of its own: it
//! finds where each value a Redis server sent ends and hands out the parts a subscriber needs
//! (a push's kind and its first string elements, an error's text) as slices of the read
//! buffer, without building a value tree or copying a payload.
//!
//! redis-rs' parser (a `Value` tree, one `Vec` per bulk string, through `combine`) was the
//! largest item of user time on the subscriber's path: reading the pushes with this reader
//! instead cut a replica's CPU per delivery by 5-11 % (BENCHMARKS.md).
//!
//! What a server sends is not trusted: every length is checked against the buffer and against
//! limits ([`MAX_BULK`], [`MAX_LINE`], [`MAX_ELEMENTS`], [`MAX_DEPTH`]), and anything that is not
//! RESP3 is an [`Error`] that names what and where. Public for the fuzz target.

use std::fmt;

/// The largest bulk string taken: Redis' own default `proto-max-bulk-len` (512 MB).
pub const MAX_BULK: usize = 512 * 1024 * 1024;
/// The longest line (a simple string, error or number) taken.
pub const MAX_LINE: usize = 64 * 1024;
/// The most elements one aggregate may declare: a subscriber's replies and pushes have a
/// handful, the publishers' connection reads a core layer group's members (thousands); Redis
/// takes no longer request from a client either.
pub const MAX_ELEMENTS: usize = 1024 * 1024;
/// The deepest nesting of aggregates taken (pushes and the `HELLO` reply have two levels).
pub const MAX_DEPTH: usize = 8;

/// The top-level elements of a push that [`Item::Push`] keeps.
pub const PUSH_PARTS: usize = 4;

/// One complete value at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// A push (`>`): its first [`PUSH_PARTS`] top-level elements, each a string's or a
    /// number's bytes (an aggregate element is an empty slice), and how many it has in all.
    /// The first is the push's kind (`message`, `pmessage`, `subscribe`, ...).
    Push {
        /// The first elements (empty slices past `len`).
        parts: [&'a [u8]; PUSH_PARTS],
        /// How many elements the push has.
        len: usize,
    },
    /// An error reply (`-` or `!`): its text, as Redis wrote it (`NOPERM this user has ...`).
    Error(&'a [u8]),
    /// Any other reply (a command's answer).
    Reply,
}

impl<'a> Item<'a> {
    /// The push's kind and the elements after it (empty for anything but a push).
    pub fn push(&self) -> Option<(&'a [u8], &[&'a [u8]])> {
        match self {
            Self::Push { parts, len } => {
                let kept = (*len).min(PUSH_PARTS);
                let (kind, rest) = parts[..kept].split_first()?;
                Some((kind, rest))
            }
            _ => None,
        }
    }
}

/// What a server sent that is not RESP3, or is beyond the limits above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Byte offset in the buffer where the offending value starts.
    pub offset: usize,
    /// What is wrong there.
    pub what: String,
    /// The value may be RESP3 but is longer, larger or deeper than the limits above.
    pub over_limit: bool,
}

impl Error {
    /// How a connection leads its report of this error: garbage, or a value it does not read.
    pub fn lead(&self) -> &'static str {
        if self.over_limit {
            "Redis sent a value beyond what this connection reads"
        } else {
            "Redis sent what is not RESP3"
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.what, self.offset)
    }
}

impl std::error::Error for Error {}

/// The first complete value in `buf` and how many bytes it takes; `Ok(None)` when `buf` holds
/// only the beginning of one (read more and ask again).
pub fn next(buf: &[u8]) -> Result<Option<(Item<'_>, usize)>, Error> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    match kind {
        b'>' => {
            let Some((count, mut at)) = header(buf, 0)? else {
                return Ok(None);
            };
            let mut parts: [&[u8]; PUSH_PARTS] = [&[]; PUSH_PARTS];
            for slot in 0..count {
                let start = at;
                let Some(end) = skip(buf, at, 1)? else {
                    return Ok(None);
                };
                if let Some(part) = parts.get_mut(slot) {
                    *part = scalar(buf, start, end);
                }
                at = end;
            }
            Ok(Some((Item::Push { parts, len: count }, at)))
        }
        b'-' | b'!' => {
            let Some(end) = skip(buf, 0, 0)? else {
                return Ok(None);
            };
            Ok(Some((Item::Error(scalar(buf, 0, end)), end)))
        }
        _ => Ok(skip(buf, 0, 0)?.map(|end| (Item::Reply, end))),
    }
}

/// The bytes a scalar value at `start..end` carries (a bulk string's content, a line's text);
/// empty for an aggregate.
fn scalar(buf: &[u8], start: usize, end: usize) -> &[u8] {
    let value = &buf[start..end];
    match value.first() {
        Some(b'$' | b'!' | b'=') => {
            // `$<len>\r\n<bytes>\r\n`: the bytes are the last `len` before the final CRLF.
            let Some(first_crlf) = value.windows(2).position(|w| w == b"\r\n") else {
                return &[];
            };
            value.get(first_crlf + 2..value.len() - 2).unwrap_or(&[])
        }
        Some(b'*' | b'>' | b'~' | b'%' | b'|') | None => &[],
        Some(_) => value.get(1..value.len() - 2).unwrap_or(&[]),
    }
}

/// The line that starts at `at` (after its type byte): where its text ends and where the next
/// value starts.
fn line(buf: &[u8], at: usize) -> Result<Option<(usize, usize)>, Error> {
    let rest = &buf[(at + 1).min(buf.len())..];
    let window = &rest[..rest.len().min(MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(n) => Ok(Some((at + 1 + n, at + 1 + n + 2))),
        None if rest.len() > MAX_LINE => Err(Error {
            offset: at,
            what: format!("a line longer than {MAX_LINE} bytes"),
            over_limit: true,
        }),
        None => Ok(None),
    }
}

/// A length or count line at `at`: the number, and where what follows starts.
fn number(buf: &[u8], at: usize, limit: usize, what: &str) -> Result<Option<(i64, usize)>, Error> {
    let Some((end, next)) = line(buf, at)? else {
        return Ok(None);
    };
    let text = &buf[at + 1..end];
    let bad = |why: &str, over_limit: bool| Error {
        offset: at,
        what: format!(
            "{what} {:?} {why}",
            String::from_utf8_lossy(&text[..text.len().min(32)])
        ),
        over_limit,
    };
    let n: i64 = std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| bad("is not a number", false))?;
    if n < -1 {
        return Err(bad("is negative", false));
    }
    if n > 0 && n as u64 > limit as u64 {
        return Err(bad(&format!("is over the limit of {limit}"), true));
    }
    Ok(Some((n, next)))
}

/// An aggregate's header at `at`: how many values follow (maps and attributes count both
/// halves), and where the first starts.
fn header(buf: &[u8], at: usize) -> Result<Option<(usize, usize)>, Error> {
    let kind = buf[at];
    let Some((n, next)) = number(buf, at, MAX_ELEMENTS, "an aggregate's element count")? else {
        return Ok(None);
    };
    // `*-1`: RESP2's null array.
    let n = usize::try_from(n.max(0)).unwrap_or(0);
    Ok(Some((
        if matches!(kind, b'%' | b'|') {
            n * 2
        } else {
            n
        },
        next,
    )))
}

/// Where the value that starts at `at` ends (`None`: not all of it is in `buf`).
fn skip(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, Error> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    match kind {
        b'$' | b'!' | b'=' => {
            let Some((n, next)) = number(buf, at, MAX_BULK, "a string's length")? else {
                return Ok(None);
            };
            let Ok(n) = usize::try_from(n) else {
                // `$-1`: RESP2's null.
                return Ok(Some(next));
            };
            let end = next + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(Error {
                    offset: at,
                    what: format!("a string of {n} bytes not followed by CRLF"),
                    over_limit: false,
                });
            }
            Ok(Some(end + 2))
        }
        b'*' | b'>' | b'~' | b'%' | b'|' => {
            if depth >= MAX_DEPTH {
                return Err(Error {
                    offset: at,
                    what: format!("aggregates nested deeper than {MAX_DEPTH}"),
                    over_limit: true,
                });
            }
            let Some((count, mut next)) = header(buf, at)? else {
                return Ok(None);
            };
            for _ in 0..count {
                let Some(end) = skip(buf, next, depth + 1)? else {
                    return Ok(None);
                };
                next = end;
            }
            if kind == b'|' {
                // An attribute precedes the value it describes.
                return skip(buf, next, depth);
            }
            Ok(Some(next))
        }
        b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => Ok(line(buf, at)?.map(|(_, next)| next)),
        other => Err(Error {
            offset: at,
            what: format!("unknown RESP3 type byte 0x{other:02x}"),
            over_limit: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(buf: &[u8]) -> (Item<'_>, usize) {
        next(buf).unwrap().unwrap()
    }

    #[test]
    fn a_message_push_hands_out_its_channel_and_payload() {
        let buf = b">3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$5\r\nhe\r\nl\r\n+PONG\r\n";
        let (item, used) = one(buf);
        let (kind, rest) = item.push().unwrap();
        assert_eq!(kind, b"message");
        assert_eq!(rest, [&b"chan"[..], &b"he\r\nl"[..]]);
        assert_eq!(next(&buf[used..]).unwrap(), Some((Item::Reply, 7)));
    }

    #[test]
    fn pmessage_and_confirmations_keep_their_parts() {
        let (item, _) = one(b">4\r\n$8\r\npmessage\r\n$2\r\np*\r\n$2\r\npx\r\n$0\r\n\r\n");
        let (kind, rest) = item.push().unwrap();
        assert_eq!(
            (kind, rest),
            (&b"pmessage"[..], &[&b"p*"[..], b"px", b""][..])
        );
        let (item, _) = one(b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(item.push().unwrap().1, [&b"a"[..], b"1"]);
    }

    #[test]
    fn every_prefix_of_a_value_asks_for_more() {
        let buf = b">3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$5\r\nhello\r\n";
        for cut in 0..buf.len() {
            assert_eq!(next(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(one(buf).1, buf.len());
    }

    #[test]
    fn replies_of_every_type_are_skipped_whole() {
        let hello = b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nmodules\r\n*0\r\n";
        assert_eq!(one(hello), (Item::Reply, hello.len()));
        for value in [
            &b"+OK\r\n"[..],
            b":-12\r\n",
            b",1.5\r\n",
            b"#t\r\n",
            b"_\r\n",
            b"(123456789012345678901234567890\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"=8\r\ntxt:abcd\r\n",
            b"~2\r\n+a\r\n+b\r\n",
            b"|1\r\n+ttl\r\n:3\r\n+value\r\n",
        ] {
            assert_eq!(one(value), (Item::Reply, value.len()), "{value:?}");
        }
    }

    #[test]
    fn error_replies_keep_redis_words() {
        let (item, _) = one(b"-NOPERM this user has no permissions\r\n");
        assert_eq!(item, Item::Error(b"NOPERM this user has no permissions"));
        let (item, _) = one(b"!9\r\nERR no su\r\n");
        assert_eq!(item, Item::Error(b"ERR no su"));
    }

    #[test]
    fn garbage_is_an_error_that_says_what_and_where() {
        for (buf, says, over_limit) in [
            (&b"hello\r\n"[..], "unknown RESP3 type byte 0x68", false),
            (b"$abc\r\n", "is not a number", false),
            (b"$-5\r\n", "is negative", false),
            (b"$3\r\nabcde\r\n", "not followed by CRLF", false),
            (b"$999999999999\r\n", "over the limit", true),
            (b"*2000000\r\n", "over the limit", true),
            (b">2\r\n+a\r\n@\r\n", "type byte 0x40", false),
        ] {
            let error = next(buf).unwrap_err();
            assert!(error.to_string().contains(says), "{buf:?}: {error}");
            assert_eq!(error.over_limit, over_limit, "{buf:?}: {error}");
        }
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        let error = next(&deep).unwrap_err();
        assert!(error.to_string().contains("nested deeper"), "{error}");
        assert!(error.lead().contains("beyond what this connection reads"));
        let long = [&b"+"[..], &vec![b'x'; MAX_LINE + 10]].concat();
        let error = next(&long).unwrap_err();
        assert!(error.to_string().contains("longer than"), "{error}");
        assert!(error.over_limit);
        assert_eq!(
            next(b"hello\r\n").unwrap_err().lead(),
            "Redis sent what is not RESP3"
        );
    }

    #[test]
    fn a_push_with_more_parts_than_kept_still_ends_right() {
        let buf = b">6\r\n+a\r\n+b\r\n+c\r\n+d\r\n*1\r\n+e\r\n:6\r\n";
        let (item, used) = one(buf);
        assert_eq!(used, buf.len());
        assert_eq!(item.push().unwrap().1.len(), PUSH_PARTS - 1);
    }
}
