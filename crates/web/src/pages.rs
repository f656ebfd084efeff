//! The HTML pages: askama templates from `templates/` and the handlers that render them.
//!
//! askama escapes every `{{ }}` expression for HTML. The only value written with `|safe` is the
//! group id as JSON, which [`json_for_script`] makes safe inside a `<script>` data block.

use std::collections::HashMap;

use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::Query;

use crate::PageOptions;

/// The query parameter that names the group, spelled as in the tutorial's view.
const GROUP_ID_PARAM: &str = "groupID";

/// `templates/index.html`: links to both chats.
#[derive(Debug, Template, WebTemplate)]
#[template(path = "index.html")]
pub(crate) struct Index;

/// `templates/chatone.html`: the tutorial's `chatting.html`.
#[derive(Debug, Template, WebTemplate)]
#[template(path = "chatone.html")]
pub(crate) struct ChatOne {
    /// The `#identity` data block (JSON), when the pages fetch connection tokens.
    identity_json: Option<String>,
}

/// `templates/chatgroup.html`: the tutorial's `groupchatting.html`.
#[derive(Debug, Template, WebTemplate)]
#[template(path = "chatgroup.html")]
pub(crate) struct ChatGroup {
    /// The id as the user typed it; empty when the query has none.
    group_id: String,
    /// The id as a JSON string (or `null`) for the `#group-id` data block.
    group_id_json: String,
    /// The `#identity` data block (JSON), when the pages fetch connection tokens.
    identity_json: Option<String>,
    /// The `#history` data block (JSON), when the server keeps group history.
    history_json: Option<String>,
    /// Presence on: the page asks for it and shows who is online.
    presence: bool,
}

/// `GET /`.
pub(crate) async fn index() -> Index {
    Index
}

/// `GET /chatone`.
pub(crate) async fn chat_one(Extension(options): Extension<Arc<PageOptions>>) -> ChatOne {
    ChatOne {
        identity_json: identity_json(&options),
    }
}

/// `GET /chatgroup?groupID=N`.
///
/// The query is read as a map so that no query string is ever rejected: a repeated `groupID`
/// keeps its last value, as Django's `request.GET.get` does, and a missing or empty one renders
/// the page without connecting (the template shows a note and the script sees `null`).
pub(crate) async fn chat_group(
    Extension(options): Extension<Arc<PageOptions>>,
    Query(query): Query<HashMap<String, String>>,
) -> ChatGroup {
    let group_id = query
        .get(GROUP_ID_PARAM)
        .filter(|id| !id.is_empty())
        .cloned();
    ChatGroup {
        group_id_json: json_for_script(group_id.as_deref()),
        group_id: group_id.unwrap_or_default(),
        identity_json: identity_json(&options),
        history_json: (options.history > 0)
            .then(|| format!(r#"{{"history": {}}}"#, options.history)),
        presence: options.presence,
    }
}

/// The `#identity` data block: `{"token_url": ...}` when the pages fetch connection tokens.
fn identity_json(options: &PageOptions) -> Option<String> {
    let url = options.token_url.as_deref()?;
    let url = json_for_script(Some(url));
    Some(format!(r#"{{"token_url": {url}}}"#))
}

impl ChatGroup {
    /// Whether the page has a group to connect to; read by the template.
    fn has_group(&self) -> bool {
        !self.group_id.is_empty()
    }
}

/// Encodes `value` as JSON that can sit verbatim inside a `<script>` element.
///
/// HTML ends a script element at the first `</script` and treats `<!--` specially, whatever
/// the JSON means, so `<`, `>` and `&` are written as JSON `\u` escapes (ecosystem.md §4.6).
/// `JSON.parse` turns them back into the original characters.
fn json_for_script(value: Option<&str>) -> String {
    serde_json::to_string(&value)
        .expect("serializing an Option<&str> to JSON cannot fail")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

#[cfg(test)]
mod tests {
    use super::json_for_script;

    #[test]
    fn json_for_script_escapes_markup_and_round_trips() {
        let json = json_for_script(Some("</script><!--&\"x"));
        assert_eq!(json, r#""\u003c/script\u003e\u003c!--\u0026\"x""#);
        let back: Option<String> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.as_deref(), Some("</script><!--&\"x"));
    }

    #[test]
    fn json_for_script_writes_null_for_no_group() {
        assert_eq!(json_for_script(None), "null");
    }
}
