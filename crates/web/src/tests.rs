//! Requests against [`crate::router`] without a socket, through `tower::ServiceExt::oneshot`.

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::header::{CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS};
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use crate::CONTENT_SECURITY_POLICY;

/// A response reduced to what the tests look at.
struct Page {
    status: StatusCode,
    content_type: String,
    csp: String,
    nosniff: String,
    referrer: String,
    body: String,
}

async fn get(uri: &str) -> Page {
    let app: Router = crate::router();
    let request = Request::get(uri).body(Body::empty()).unwrap();
    let response = app.oneshot(request).await.unwrap();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (content_type, nosniff, referrer) = (
        header(CONTENT_TYPE),
        header(X_CONTENT_TYPE_OPTIONS),
        header(REFERRER_POLICY),
    );
    let csp = header(axum::http::header::CONTENT_SECURITY_POLICY);
    let status = response.status();
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    Page {
        status,
        content_type,
        csp,
        nosniff,
        referrer,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

/// Asserts that `body` contains `needle`, printing both if it does not.
#[track_caller]
fn assert_contains(body: &str, needle: &str) {
    assert!(body.contains(needle), "missing {needle:?} in:\n{body}");
}

/// Asserts the elements both chat pages share: message box, input, send and close buttons.
fn assert_chat_controls(body: &str, placeholder: &str) {
    assert_contains(body, r#"<meta charset="UTF-8">"#);
    assert_contains(body, r#"<div class="message" id="message"></div>"#);
    let input = format!(r#"<input type="text" placeholder="{placeholder}" id="txt">"#);
    assert_contains(body, &input);
    assert_contains(body, r#"<input type="button" value="点击发送" id="send">"#);
    assert_contains(body, r#"<input type="button" value="关闭连接" id="close">"#);
    assert_contains(body, r#"<script src="/static/chat.js" defer></script>"#);
    assert!(!body.contains("onclick"), "no inline handlers: {body}");
}

/// Asserts that every `<script>` element on the page is either external or a JSON data block.
fn assert_no_inline_script(body: &str) {
    for (index, _) in body.match_indices("<script") {
        let tag = &body[index..];
        let tag = &tag[..tag.find('>').unwrap()];
        assert!(
            tag.contains(" src=") || tag.contains(r#"type="application/json""#),
            "inline script: {tag}"
        );
    }
}

#[tokio::test]
async fn index_links_to_both_chats() {
    let page = get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.content_type, "text/html; charset=utf-8");
    assert_contains(&page.body, r#"href="/chatone""#);
    assert_contains(&page.body, r#"href="/chatgroup?groupID=1""#);
}

#[tokio::test]
async fn chat_one_has_the_tutorial_controls() {
    let page = get("/chatone").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.content_type, "text/html; charset=utf-8");
    assert_chat_controls(&page.body, "请输入聊天内容:");
    assert_contains(
        &page.body,
        r#"<script src="/static/chatone.js" defer></script>"#,
    );
    assert_contains(&page.body, "<title>单人聊天</title>");
    assert_no_inline_script(&page.body);
}

#[tokio::test]
async fn chat_group_shows_the_group_id() {
    let page = get("/chatgroup?groupID=42").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_chat_controls(&page.body, "请输入群聊内容:");
    assert_contains(
        &page.body,
        r#"<div id="group-title"> 群组内聊天[ 群ID: 42 ] </div>"#,
    );
    assert_contains(
        &page.body,
        r#"<script type="application/json" id="group-id">"42"</script>"#,
    );
    assert_contains(
        &page.body,
        r#"<script src="/static/chatgroup.js" defer></script>"#,
    );
    assert_contains(&page.body, "<title>群组聊天</title>");
    assert!(!page.body.contains(r#"id="notice""#), "{}", page.body);
    assert_no_inline_script(&page.body);
}

#[tokio::test]
async fn chat_group_escapes_a_script_in_the_group_id() {
    let page = get("/chatgroup?groupID=%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    assert!(!page.body.contains("</script>alert"), "{}", page.body);
    assert_contains(
        &page.body,
        "群ID: &#60;script&#62;alert(1)&#60;/script&#62; ]",
    );
    let json = r#"id="group-id">"\u003cscript\u003ealert(1)\u003c/script\u003e"</script>"#;
    assert_contains(&page.body, json);
    assert_no_inline_script(&page.body);
}

#[tokio::test]
async fn chat_group_without_id_shows_a_note_and_passes_null() {
    for uri in ["/chatgroup", "/chatgroup?groupID=", "/chatgroup?other=1"] {
        let page = get(uri).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}");
        assert_contains(&page.body, " 群组内聊天[ 群ID:  ] ");
        assert_contains(&page.body, r#"id="group-id">null</script>"#);
        assert_contains(&page.body, r#"id="notice""#);
    }
}

#[tokio::test]
async fn chat_group_keeps_the_last_of_repeated_ids() {
    let page = get("/chatgroup?groupID=a&groupID=b").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_contains(&page.body, "群ID: b ]");
}

#[tokio::test]
async fn pages_send_the_security_headers() {
    for uri in ["/", "/chatone", "/chatgroup?groupID=1", "/static/chat.js"] {
        let page = get(uri).await;
        assert_eq!(page.csp, CONTENT_SECURITY_POLICY, "{uri}");
        assert_eq!(page.nosniff, "nosniff", "{uri}");
        assert_eq!(page.referrer, "no-referrer", "{uri}");
    }
    assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self';"));
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
}

#[tokio::test]
async fn scripts_are_served_as_javascript() {
    for (uri, needle) in [
        ("/static/chat.js", "window.channelsChat"),
        ("/static/chatone.js", r#""/room/123/""#),
        ("/static/chatgroup.js", "encodeURIComponent(groupId)"),
    ] {
        let page = get(uri).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}");
        assert_eq!(page.content_type, "text/javascript; charset=utf-8", "{uri}");
        assert_contains(&page.body, needle);
    }
}

#[tokio::test]
async fn chat_script_derives_the_socket_url_from_the_location() {
    let page = get("/static/chat.js").await;
    assert_contains(
        &page.body,
        r#"location.protocol === "https:" ? "wss:" : "ws:""#,
    );
    assert_contains(&page.body, r#"scheme + "//" + location.host + path"#);
    assert!(!page.body.contains("127.0.0.1"));
    assert!(!page.body.contains("innerHTML"));
    for status in ["[连接成功!]", "[连接失败!]", "[连接已断开!]"] {
        assert_contains(&page.body, status);
    }
    let page = get("/static/chatone.js").await;
    assert_contains(&page.body, "[连接已断开啦!]");
}

#[tokio::test]
async fn style_sheet_is_served_as_css() {
    let page = get("/static/chat.css").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.content_type, "text/css; charset=utf-8");
    assert_contains(&page.body, ".message");
}

#[tokio::test]
async fn favicon_is_empty_instead_of_missing() {
    let page = get("/favicon.ico").await;
    assert_eq!(page.status, StatusCode::NO_CONTENT);
    assert!(page.body.is_empty());
}
