//! The ui extension over HTTP: security headers on every response, no
//! inline script or style, hostile labels and annotations shown as text,
//! what each visitor sees, and sign-in with its CSRF, cookie and redirect
//! rules; and the pages driven in headless Chromium by Selenium
//! (tests/clients/ui_browser.py), with screenshots.

#![cfg(feature = "ui")]
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::images::Pusher;
use common::ui::{cookie_value, fetch, post, set_cookies, sign_in_with, Page};
use common::{client, Berth};

const POLICY: &str = r#"
[access]
default_policy = []
anonymous_policy = []
admin_policy = { users = ["admin"], actions = ["read", "create", "update", "delete"] }

[[access.repositories]]
pattern = "team-a/**"
policies = [{ users = ["reader"], actions = ["read"] }]

[[access.repositories]]
pattern = "public/*"
anonymous_policy = ["read"]
default_policy = ["read"]
"#;

pub const HOSTILE: &str = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>";

fn basic(user: &str) -> String {
    common::basic(user, &format!("{user}-password"))
}

fn start() -> (tempfile::TempDir, Berth) {
    let dir = tempfile::tempdir().unwrap();
    common::users_file(dir.path(), &["reader", "admin"]);
    let auth = format!(
        "[auth]\nhtpasswd = {:?}\nadmins = [\"admin\"]\n[auth.throttle]\nuser_lockout = 1000\n",
        dir.path().join("users").display().to_string()
    );
    let berth = Berth::start(&format!("{auth}{POLICY}"));
    (dir, berth)
}

/// A hidden form field's value in a page.
fn field(body: &str, name: &str) -> String {
    let at = body.find(&format!("name=\"{name}\" value=\"")).unwrap_or_else(|| panic!("no field {name} in {body}"));
    let rest = &body[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn assert_secure_headers(p: &Page, what: &str) {
    let h = |k: &str| p.headers.get(k).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let csp = h("content-security-policy");
    for directive in ["default-src 'none'", "script-src 'self'", "frame-ancestors 'none'", "form-action 'self'"] {
        assert!(csp.contains(directive), "{what}: CSP {csp:?} lacks {directive}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{what}: {csp}");
    assert_eq!(h("x-frame-options"), "DENY", "{what}");
    assert_eq!(h("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(h("referrer-policy"), "same-origin", "{what}");
}

/// No script but external ones, no inline style or event handler.
fn assert_no_inline_code(p: &Page, what: &str) {
    let lower = p.body.to_ascii_lowercase();
    for (at, _) in lower.match_indices("<script") {
        let tag = &lower[at..at + lower[at..].find('>').unwrap()];
        assert!(tag.contains(" src=\"/ui/assets/"), "{what}: an inline script: {tag}");
    }
    assert!(!lower.contains("<style"), "{what}: a style element");
    // Inside tags (escaped text holds no `<`): no style or on* attribute.
    for (at, _) in lower.match_indices('<') {
        let tag = &lower[at..at + lower[at..].find('>').unwrap_or(lower.len() - at)];
        if !tag[1..].starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        assert!(!tag.contains(" style="), "{what}: an inline style: {tag}");
        let handler = tag.split_whitespace().skip(1).any(|attr| {
            attr.starts_with("on")
                && attr[2..].split('=').next().is_some_and(|n| n.chars().all(|c| c.is_ascii_alphabetic()))
                && attr.contains('=')
        });
        assert!(!handler, "{what}: an event handler attribute: {tag}");
    }
}

async fn populate(b: &Berth) {
    let admin = Pusher::new(&b.base, Some(basic("admin")));
    let hostile = [("org.example.note", HOSTILE), (HOSTILE, "a hostile key")];
    let v1 = admin.image("team-a/app", Some("v1"), ("linux", "amd64"), &hostile, &[b"layer one", b"layer two"]).await;
    admin.referrer("team-a/app", &v1, "application/spdx+json", b"{}").await;
    admin.image("team-b/secret", Some("v1"), ("linux", "amd64"), &[], &[b"secret"]).await;
    admin.image("public/app", Some("stable"), ("linux", "amd64"), &[], &[b"public"]).await;
    // The index is built in the background: wait until it has them all.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = client()
            .get(b.url("/v2/_berth/search/repositories"))
            .header("authorization", basic("admin"))
            .send()
            .await
            .unwrap();
        if resp.status() == 200 && resp.json::<serde_json::Value>().await.unwrap()["total"] == 3 {
            return;
        }
        assert!(Instant::now() < deadline, "the search index never showed the pushed repositories");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sign_in(b: &Berth, user: &str) -> String {
    sign_in_with(b, &[("username", user), ("password", &format!("{user}-password"))]).await
}

/// A Berth with the token service and an htpasswd file re-read every
/// 100 ms, users `reader` and `admin`.
fn start_with_token_service() -> (tempfile::TempDir, Berth) {
    common::token_service_berth(&["reader", "admin"], "reload_interval = \"100ms\"", POLICY)
}

#[tokio::test]
async fn pages_carry_the_security_headers_and_escape_what_they_show() {
    let (_dir, b) = start();
    populate(&b).await;
    let session = sign_in(&b, "reader").await;

    // Every kind of response: pages, assets, redirects, errors.
    let digest_page = fetch(&b, "/ui/images/team-a/app/v1", Some(&session)).await;
    assert_eq!(digest_page.status, 200, "{}", digest_page.body);
    for (path, cookie, status) in [
        ("/ui/", None, 200),
        ("/ui/", Some(session.as_str()), 200),
        ("/ui/?q=app", Some(session.as_str()), 200),
        ("/ui/repositories/team-a/app", Some(session.as_str()), 200),
        ("/ui/images/team-a/app/v1", Some(session.as_str()), 200),
        ("/ui/login", None, 200),
        ("/ui/assets/app.css", None, 200),
        ("/ui/assets/app.js", None, 200),
        ("/ui/assets/nothing.js", None, 404),
        ("/ui/no/such/page", None, 404),
        ("/ui/repositories/team-a/app", None, 303),
        ("/ui/repositories/team-b/secret", Some(session.as_str()), 403),
        ("/ui/images/team-a/app/nope", Some(session.as_str()), 404),
        ("/ui/images/Bad/Name/v1", Some(session.as_str()), 404),
        ("/ui", None, 303),
    ] {
        let p = fetch(&b, path, cookie).await;
        assert_eq!(p.status, status, "{path}: {}", p.body);
        assert_secure_headers(&p, path);
        if p.headers.get("content-type").is_some_and(|v| v.to_str().unwrap().starts_with("text/html")) {
            assert_no_inline_code(&p, path);
            assert_eq!(
                p.headers.get("cache-control").unwrap_or_else(|| panic!("{path}: no cache-control")),
                "no-store",
                "{path}"
            );
        }
    }
    // The script is served as script and holds no secret.
    let js = fetch(&b, "/ui/assets/app.js", None).await;
    assert!(js.headers.get("content-type").unwrap().to_str().unwrap().starts_with("text/javascript"));

    // The hostile label and annotation key show as text: escaped, never
    // markup.
    let page = &digest_page.body;
    assert!(!page.contains(HOSTILE), "the hostile label reached the page unescaped");
    assert!(!page.contains("<img src=x"), "markup from a label reached the page");
    assert!(
        page.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"),
        "{page}"
    );
    assert!(page.contains("application/spdx+json"), "the SBOM is listed");
    assert!(page.contains("docker pull 127.0.0.1:"), "a pull command: {page}");
    assert!(page.contains("podman pull 127.0.0.1:"));
    assert!(page.contains("data-copy-target=\"docker-tag\""));

    // What each visitor sees.
    let anonymous = fetch(&b, "/ui/", None).await.body;
    assert!(anonymous.contains("public/app") && !anonymous.contains("team-a/app") && !anonymous.contains("team-b"));
    let reader = fetch(&b, "/ui/", Some(&session)).await.body;
    assert!(reader.contains("team-a/app") && reader.contains("public/app") && !reader.contains("team-b/secret"));
    assert!(reader.contains("Signed in as <strong>reader</strong>"), "{reader}");
    let searched = fetch(&b, "/ui/?q=secret", Some(&session)).await.body;
    assert!(searched.contains("0 repositories"), "{searched}");
    // A page that needs a sign-in sends the anonymous visitor there, and
    // back afterwards.
    let redirect = fetch(&b, "/ui/repositories/team-a/app", None).await;
    assert_eq!(redirect.headers.get("location").unwrap(), "/ui/login?next=%2Fui%2Frepositories%2Fteam-a%2Fapp");
}

#[tokio::test]
async fn sign_in_needs_the_csrf_token_and_sets_a_strict_cookie() {
    let (_dir, b) = start();
    let form = fetch(&b, "/ui/login", None).await;
    let set = set_cookies(&form);
    assert_eq!(set.len(), 1, "{set:?}");
    for attr in ["__Host-berth_csrf=", "Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(set[0].contains(attr), "{attr} missing from {}", set[0]);
    }
    let csrf = cookie_value(&form, "__Host-berth_csrf").unwrap();
    assert_eq!(field(&form.body, "csrf"), csrf);
    let cookie = format!("__Host-berth_csrf={csrf}");
    let good = [("csrf", csrf.as_str()), ("username", "reader"), ("password", "reader-password")];

    // Refused: no token, a wrong one, no cookie, another site's Origin.
    let other = "x".repeat(43);
    for (what, cookie, origin, form) in [
        ("no token", Some(cookie.as_str()), None, vec![("username", "reader"), ("password", "reader-password")]),
        (
            "a wrong token",
            Some(cookie.as_str()),
            None,
            vec![("csrf", other.as_str()), ("username", "reader"), ("password", "reader-password")],
        ),
        ("no cookie", None, None, good.to_vec()),
        ("another site", Some(cookie.as_str()), Some("https://evil.example"), good.to_vec()),
    ] {
        let p = post(&b, "/ui/login", cookie, origin, &form).await;
        assert_eq!(p.status, 403, "{what}: {}", p.body);
        assert!(p.body.contains("CSRF"), "{what}: {}", p.body);
        assert!(cookie_value(&p, "__Host-berth_session").is_none(), "{what}: a session was started");
        assert_secure_headers(&p, what);
    }
    // Wrong password: the form again, 401, no session.
    let wrong =
        post(&b, "/ui/login", Some(&cookie), None, &[("csrf", &csrf), ("username", "reader"), ("password", "nope")])
            .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("Wrong user name, password or token."));
    assert!(cookie_value(&wrong, "__Host-berth_session").is_none());

    // Right: a strict session cookie and a redirect that stays on this site.
    let own_origin = b.base.clone();
    let mut with_next = good.to_vec();
    with_next.push(("next", "https://evil.example/steal"));
    let done = post(&b, "/ui/login", Some(&cookie), Some(&own_origin), &with_next).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.headers.get("location").unwrap(), "/ui/");
    let session_cookie = set_cookies(&done).into_iter().find(|c| c.starts_with("__Host-berth_session=")).unwrap();
    for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict", "Max-Age="] {
        assert!(session_cookie.contains(attr), "{attr} missing from {session_cookie}");
    }
    let session = format!("__Host-berth_session={}", cookie_value(&done, "__Host-berth_session").unwrap());
    let home = fetch(&b, "/ui/", Some(&session)).await;
    assert!(home.body.contains("Signed in as"), "{}", home.body);
    let logout_csrf = field(&home.body, "csrf");
    assert_ne!(logout_csrf, csrf, "the session has a token of its own");

    // Sign-out needs the session's token too.
    let refused = post(&b, "/ui/logout", Some(&session), None, &[("csrf", &csrf)]).await;
    assert_eq!(refused.status, 403);
    assert!(
        fetch(&b, "/ui/", Some(&session)).await.body.contains("Signed in as"),
        "a refused sign-out ended the session"
    );
    let out = post(&b, "/ui/logout", Some(&session), None, &[("csrf", &logout_csrf)]).await;
    assert_eq!(out.status, 303);
    assert!(set_cookies(&out).iter().any(|c| c.starts_with("__Host-berth_session=;") && c.contains("Max-Age=0")));
    let after = fetch(&b, "/ui/", Some(&session)).await;
    assert!(!after.body.contains("Signed in as"), "the session outlived its sign-out");

    // Sign-in attempts are audited like API logins.
    let log = b.stderr();
    assert!(log.contains("ui_login"), "{log}");
    assert!(!log.contains("reader-password"), "a password reached the log");
}

/// A process group killed when dropped (the browser run: python,
/// chromedriver and Chromium), even when the test fails.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        // `--`: a negative pid right after the signal is not a group to
        // util-linux's kill without it.
        let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).status();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_browser_signs_in_searches_copies_and_runs_no_hostile_script() {
    use std::os::unix::process::CommandExt as _;
    let (_dir, b) = start();
    populate(&b).await;
    let shots = std::env::var("BERTH_UI_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots"));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/ui_browser.py");
    let out_path = b.dir.path().join("browser.out");
    let err_path = b.dir.path().join("browser.err");
    let child = std::process::Command::new(common::venv_python())
        .arg(&script)
        .args([b.base.as_str(), "reader", "reader-password"])
        .arg(&shots)
        .arg(HOSTILE)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .process_group(0)
        .spawn()
        .expect("run the browser script");
    let mut group = Group(child);
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = group.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the browser run took over 300 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(status.success(), "the browser run failed ({status}):\n{stderr}\n{stdout}\nberth:\n{}", b.stderr());
    let results: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    println!("browser results: {results}");
    println!("screenshots in {}", shots.display());
    assert_eq!(results["anonymous_repositories"], serde_json::json!(["public/app"]));
    assert_eq!(results["signed_out"], true);
    assert!(results["copied"].as_str().unwrap().starts_with("docker pull 127.0.0.1:"));
    for name in [
        "ui-signed-out.png",
        "ui-sign-in.png",
        "ui-repositories.png",
        "ui-search.png",
        "ui-repository.png",
        "ui-image.png",
        "ui-phone.png",
    ] {
        let png = std::fs::read(shots.join(name)).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name} is no PNG");
    }
}

/// Sign-in with an access token from the token service: the session has
/// the token's rights (no more), and ends when the token does.
#[tokio::test]
async fn sign_in_with_an_access_token_keeps_to_its_scope() {
    let (_dir, b) = start_with_token_service();
    populate(&b).await;
    let admin = Pusher::new(&b.base, Some(basic("admin")));
    admin.image("team-a/web", Some("v1"), ("linux", "amd64"), &[], &[b"web"]).await;
    // A token for the reader, for one repository only.
    let token = common::token_for(&b, "reader", "repository:team-a/web:pull").await;
    let token = token.as_str();
    let form = fetch(&b, "/ui/login", None).await;
    let csrf = cookie_value(&form, "__Host-berth_csrf").unwrap();
    let cookie = format!("__Host-berth_csrf={csrf}");
    let done = post(&b, "/ui/login", Some(&cookie), None, &[("csrf", &csrf), ("token", token)]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let set = set_cookies(&done).into_iter().find(|c| c.starts_with("__Host-berth_session=")).unwrap();
    let max_age: u64 = set.split("Max-Age=").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();
    assert!(max_age <= 3600, "the session outlives the token: {set}");
    let session = format!("__Host-berth_session={}", cookie_value(&done, "__Host-berth_session").unwrap());
    let home = fetch(&b, "/ui/", Some(&session)).await.body;
    assert!(home.contains("team-a/web"), "{home}");
    assert!(!home.contains("team-a/app"), "the token grants team-a/web only: {home}");
    assert_eq!(fetch(&b, "/ui/repositories/team-a/web", Some(&session)).await.status, 200);
    assert_eq!(fetch(&b, "/ui/repositories/team-a/app", Some(&session)).await.status, 403);
    // A forged token is refused like a wrong password.
    let bad = post(&b, "/ui/login", Some(&cookie), None, &[("csrf", &csrf), ("token", "e30.e30.c2ln")]).await;
    assert_eq!(bad.status, 401, "{}", bad.body);
    assert!(cookie_value(&bad, "__Host-berth_session").is_none());
}

/// A session ends as soon as its credential does, on its next use: its
/// token or its subject revoked, its htpasswd user given a new password or
/// removed. Other sessions go on.
#[tokio::test]
async fn a_session_ends_with_its_credential() {
    let (dir, b) = start_with_token_service();
    let signed_in = |b: &Berth, session: String| {
        let url = b.url("/ui/");
        async move {
            let body = client().get(url).header("cookie", session).send().await.unwrap().text().await.unwrap();
            body.contains("Signed in as")
        }
    };
    async fn until_signed_out<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while check().await {
            assert!(Instant::now() < deadline, "the session outlived {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let revoke = |body: serde_json::Value| {
        let url = b.url("/admin/revocations");
        async move {
            let resp = client().post(url).header("authorization", basic("admin")).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 201);
        }
    };
    let by_password = sign_in(&b, "reader").await;
    let token = common::token_for(&b, "reader", "repository:team-a/web:pull").await;
    let by_token = sign_in_with(&b, &[("token", &token)]).await;
    let admin = sign_in(&b, "admin").await;
    for s in [&by_password, &by_token, &admin] {
        assert!(signed_in(&b, s.clone()).await);
    }

    // The token revoked: its session ends, the password one goes on.
    let claims = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims).unwrap(),
    )
    .unwrap();
    revoke(serde_json::json!({"jti": claims["jti"]})).await;
    until_signed_out("its token's revocation", || signed_in(&b, by_token.clone())).await;
    assert!(signed_in(&b, by_password.clone()).await);

    // A new password for the reader: the session signed in with the old
    // one ends; the new one signs in.
    let users = dir.path().join("users");
    // The admin's line stays as it was (a new hash of the same password
    // would count as a new password).
    let before = std::fs::read_to_string(&users).unwrap();
    let admin_line = before.lines().find(|l| l.starts_with("admin:")).unwrap().to_owned();
    let write_users = |lines: &[&str]| {
        // Written aside and renamed, as an operator's tool should.
        let aside = dir.path().join("users.new");
        std::fs::write(&aside, lines.join("\n") + "\n").unwrap();
        std::fs::rename(&aside, &users).unwrap();
    };
    write_users(&[&common::user_hash("reader", "new-password"), &admin_line]);
    until_signed_out("its password", || signed_in(&b, by_password.clone())).await;
    let again = sign_in_with(&b, &[("username", "reader"), ("password", "new-password")]).await;
    assert!(signed_in(&b, again.clone()).await);
    assert!(signed_in(&b, admin.clone()).await, "another user's session ended");

    // Signing in again from the same browser (its session cookie sent
    // along) ends the session it had.
    let form = fetch(&b, "/ui/login", Some(&again)).await;
    let csrf = cookie_value(&form, "__Host-berth_csrf").unwrap();
    let cookies = format!("{again}; __Host-berth_csrf={csrf}");
    let fields = [("csrf", csrf.as_str()), ("username", "reader"), ("password", "new-password")];
    let done = post(&b, "/ui/login", Some(&cookies), None, &fields).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let replaced = again;
    let again = format!("__Host-berth_session={}", cookie_value(&done, "__Host-berth_session").unwrap());
    assert_ne!(again, replaced);
    assert!(!signed_in(&b, replaced.clone()).await, "the replaced session lives on");
    assert!(signed_in(&b, again.clone()).await);

    // Every token of the reader revoked: the reader's session ends too.
    revoke(serde_json::json!({"subject": "reader"})).await;
    until_signed_out("its subject's revocation", || signed_in(&b, again.clone())).await;
    assert!(signed_in(&b, admin.clone()).await);

    // The admin removed from the file: the admin's session ends.
    write_users(&[&common::user_hash("reader", "new-password")]);
    until_signed_out("its user", || signed_in(&b, admin.clone())).await;
    let log = b.stderr();
    for why in ["its token was revoked", "its user was removed or has a new password", "every token of its subject"] {
        assert!(log.contains(why), "no log line says a session ended because {why}");
    }
}
