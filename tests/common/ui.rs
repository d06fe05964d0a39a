//! The ui extension's pages over HTTP: fetching and posting forms with
//! cookies, and signing in.

use super::{client, Berth};

pub struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

pub async fn fetch(b: &Berth, path: &str, cookie: Option<&str>) -> Page {
    let mut r = client().get(b.url(path));
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    let resp = r.send().await.unwrap();
    Page { status: resp.status().as_u16(), headers: resp.headers().clone(), body: resp.text().await.unwrap() }
}

pub async fn post(b: &Berth, path: &str, cookie: Option<&str>, origin: Option<&str>, form: &[(&str, &str)]) -> Page {
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let mut r = client().post(b.url(path)).header("content-type", "application/x-www-form-urlencoded").body(body);
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    if let Some(o) = origin {
        r = r.header("origin", o);
    }
    let resp = r.send().await.unwrap();
    Page { status: resp.status().as_u16(), headers: resp.headers().clone(), body: resp.text().await.unwrap() }
}

pub fn set_cookies(p: &Page) -> Vec<String> {
    p.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

/// The value of `name` among `Set-Cookie` headers.
pub fn cookie_value(p: &Page, name: &str) -> Option<String> {
    set_cookies(p).iter().find_map(|c| {
        let (pair, _) = c.split_once(';').unwrap_or((c, ""));
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// Sign in with these form fields (user name and password, or token);
/// the session cookie to send.
pub async fn sign_in_with(b: &Berth, credentials: &[(&str, &str)]) -> String {
    let done = try_sign_in(b, credentials).await;
    assert_eq!(done.status, 303, "{}", done.body);
    format!("__Host-berth_session={}", cookie_value(&done, "__Host-berth_session").unwrap())
}

/// Post the sign-in form with these fields and a valid CSRF token; the
/// answer.
pub async fn try_sign_in(b: &Berth, credentials: &[(&str, &str)]) -> Page {
    let form = fetch(b, "/ui/login", None).await;
    let csrf = cookie_value(&form, "__Host-berth_csrf").unwrap();
    let cookie = format!("__Host-berth_csrf={csrf}");
    let mut fields = vec![("csrf", csrf.as_str()), ("next", "/ui/")];
    fields.extend_from_slice(credentials);
    post(b, "/ui/login", Some(&cookie), None, &fields).await
}
