//! Requests against [`crate::router`] without a socket, through `tower::ServiceExt::oneshot`.

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::header::{CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS};
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use crate::CONTENT_SECURITY_POLICY;
use crate::reconnect;

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
    let status = r#"<div class="status" id="status" role="status" data-state="idle">"#;
    assert_contains(body, &format!("{status}未连接 / not connected</div>"));
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

/// The value of `var NAME = VALUE;` in `script`, as written.
#[track_caller]
fn js_var<'a>(script: &'a str, name: &str) -> &'a str {
    let start = format!("var {name} = ");
    let line = script
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with(&start))
        .unwrap_or_else(|| panic!("no `{start}...` in chat.js"));
    line[start.len()..].trim_end_matches(';')
}

/// Parses a JavaScript array literal of integers such as `[1001, 1006]`.
#[track_caller]
fn js_int_array(literal: &str) -> Vec<u16> {
    let inner = literal
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not an array literal: {literal}"));
    inner
        .split(',')
        .map(|n| n.trim().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn chat_script_declares_the_documented_reconnect_policy() {
    let script = get("/static/chat.js").await.body;
    assert_eq!(js_var(&script, "BASE_MS"), reconnect::BASE_MS.to_string());
    assert_eq!(js_var(&script, "CAP_MS"), reconnect::CAP_MS.to_string());
    assert_eq!(
        js_var(&script, "STABLE_MS"),
        reconnect::STABLE_MS.to_string()
    );
    let codes = js_int_array(js_var(&script, "RECONNECT_CODES"));
    assert_eq!(codes, reconnect::RECONNECT_CODES);
    let drain = js_int_array(js_var(&script, "DRAIN_CODES"));
    assert_eq!(drain, reconnect::DRAIN_CODES);
    // The documented numbers themselves (reliability-security.md §5).
    assert_eq!((reconnect::BASE_MS, reconnect::CAP_MS), (500, 15_000));
    assert_eq!(reconnect::STABLE_MS, 5_000);
    assert_eq!(
        codes,
        [1001, 1006, 1011, 1012, 1013, 4008, 4009, 4010, 4401]
    );
}

#[tokio::test]
async fn chat_script_uses_full_jitter_and_stops_on_the_close_button() {
    let script = get("/static/chat.js").await.body;
    // Full jitter: a uniform draw over the whole window, from Math.random unless a test passes
    // its own source, with the exponential ceiling capped.
    assert_contains(&script, "function backoffDelay(attempt, code, random)");
    assert_contains(&script, "Math.min(CAP_MS, BASE_MS * Math.pow(2, n))");
    assert_contains(&script, "Math.floor(r * ceiling)");
    assert_contains(&script, "backoffDelay(attempt, code, Math.random)");
    assert_contains(&script, "backoffDelay: backoffDelay");
    // The close button ends reconnecting for good, including a retry already scheduled.
    assert_contains(&script, "stopped = true;");
    assert_contains(&script, "clearTimeout(retryTimer)");
    assert_contains(&script, "if (stopped || !shouldReconnect(event.code))");
    // The send button writes to the socket of the moment, not the first one.
    assert_contains(&script, "socket = ws;");
    // Timers get functions, never strings (which the CSP would block as eval).
    assert!(!script.contains("setTimeout(\""), "string timer in chat.js");
    assert!(!script.contains("eval("), "eval in chat.js");
}

#[tokio::test]
async fn chat_script_exposes_the_test_globals_and_shows_every_state() {
    let script = get("/static/chat.js").await.body;
    for global in [
        "window.wsState = \"idle\";",
        "window.wsCloseCode = null;",
        "window.wsConnects = 0;",
        "window.wsReconnectDelays = [];",
        "window.wsConnects += 1;",
        "window.wsReconnectDelays.push(delay);",
        "window.wsState = \"reconnecting\";",
    ] {
        assert_contains(&script, global);
    }
    for status in [
        "连接中 / connecting",
        "已连接 / connected",
        "重新连接中 (第 ",
        " 秒后) / reconnecting (attempt ",
        "已断开 / disconnected",
    ] {
        assert_contains(&script, status);
    }
    assert_contains(&script, r#"document.getElementById("status")"#);
    assert!(!script.contains("innerHTML"));
}

#[tokio::test]
async fn status_has_a_style_for_every_state() {
    let css = get("/static/chat.css").await.body;
    for state in ["open", "connecting", "reconnecting", "disconnected"] {
        assert_contains(&css, &format!(r#".status[data-state="{state}"]"#));
    }
}

#[test]
fn reconnect_codes_follow_the_server_close_codes() {
    for code in [1001, 1006, 1011, 1012, 1013, 4008, 4009, 4010, 4401] {
        assert!(reconnect::should_reconnect(code), "{code} should reconnect");
    }
    // 1005 is what a browser reports when the user's close() sent no code.
    for code in [1000, 1003, 1005, 1008, 1009, 4400, 4403] {
        assert!(
            !reconnect::should_reconnect(code),
            "{code} must not reconnect"
        );
    }
}

#[test]
fn backoff_ceiling_doubles_up_to_the_cap() {
    let ceilings: Vec<u32> = (1..=7)
        .map(|attempt| reconnect::delay_ceiling_ms(attempt, 1006))
        .collect();
    assert_eq!(
        ceilings,
        [1_000, 2_000, 4_000, 8_000, 15_000, 15_000, 15_000]
    );
    assert_eq!(reconnect::delay_ceiling_ms(0, 1013), 1_000);
    assert_eq!(
        reconnect::delay_ceiling_ms(u32::MAX, 1006),
        reconnect::CAP_MS
    );
    for attempt in 0..=64 {
        assert!(reconnect::delay_ceiling_ms(attempt, 1011) <= reconnect::CAP_MS);
    }
}

#[test]
fn a_drain_retries_almost_at_once_then_backs_off() {
    for code in reconnect::DRAIN_CODES {
        assert_eq!(reconnect::delay_ceiling_ms(1, code), reconnect::BASE_MS);
        assert_eq!(reconnect::delay_ceiling_ms(2, code), 2_000);
    }
    assert_eq!(reconnect::delay_ceiling_ms(1, 1013), 1_000);
}
