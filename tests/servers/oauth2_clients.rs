//! Client authentication at the RFC 6749 token endpoint (§2.3.1): Basic
//! with form-urlencoded credentials, body parameters, public clients, and
//! exactly one method per request.

use super::oauth2::{
    assert_error, basic, refresh_form, server, BASIC_ID, BASIC_SECRET, POST_ID, POST_SECRET,
    PUBLIC_ID,
};
use super::*;

/// `Basic base64(id ":" secret)`, without the form encoding.
fn unencoded_basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

#[tokio::test]
async fn basic_credentials_must_be_form_urlencoded_before_base64() {
    bounded(async {
        let oauth = server(true).await;
        let family = oauth.authorize(BASIC_ID, "read");
        let form = refresh_form(&family.refresh_token);
        let with_authorization = |value: String| {
            call(Method::POST, &oauth.token_url())
                .header(AUTHORIZATION, &value)
                .form(&form)
        };

        // Unencoded, the first `:` of the id ends it.
        let answer = with_authorization(unencoded_basic(BASIC_ID, BASIC_SECRET))
            .send()
            .await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
        assert!(header(&answer, WWW_AUTHENTICATE)
            .unwrap()
            .starts_with("Basic"));
        // `%2F` in the secret is three characters, not `/`: decoding
        // twice would break it.
        let answer = with_authorization(basic(BASIC_ID, "p@ss:w+rd /="))
            .send()
            .await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
        let answer = with_authorization("Bearer abc".to_owned()).send().await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
        assert!(header(&answer, WWW_AUTHENTICATE)
            .unwrap()
            .starts_with("Basic"));
        let answer = with_authorization("Basic !!not base64!!".to_owned())
            .send()
            .await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");

        let answer = with_authorization(basic(BASIC_ID, BASIC_SECRET))
            .send()
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["scope"], "read");
        let stats = oauth.stats();
        assert_eq!((stats.invalid_client, stats.refreshed), (4, 1));
    })
    .await;
}

#[tokio::test]
async fn client_secret_post_authenticates_with_body_parameters() {
    bounded(async {
        let oauth = server(true).await;
        let family = oauth.authorize(POST_ID, "read");
        let refresh_token = family.refresh_token.as_str();
        let post = |secret: &str| {
            let mut form = refresh_form(refresh_token);
            form.extend([("client_id", POST_ID), ("client_secret", secret)]);
            call(Method::POST, &oauth.token_url()).form(&form)
        };

        let answer = post("wrong").send().await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
        assert!(answer.headers.get(WWW_AUTHENTICATE).is_none());
        // Basic with a wrong password is refused with a Basic challenge.
        let answer = call(Method::POST, &oauth.token_url())
            .header(AUTHORIZATION, &basic(POST_ID, "wrong"))
            .form(&refresh_form(refresh_token))
            .send()
            .await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
        assert!(header(&answer, WWW_AUTHENTICATE)
            .unwrap()
            .starts_with("Basic"));
        // A Basic client may not use the body (RFC 6749 §2.3.1 leaves body
        // credentials to the server).
        let basic_family = oauth.authorize(BASIC_ID, "read");
        let mut form = refresh_form(&basic_family.refresh_token);
        form.extend([("client_id", BASIC_ID), ("client_secret", BASIC_SECRET)]);
        let answer = call(Method::POST, &oauth.token_url())
            .form(&form)
            .send()
            .await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");

        let answer = post(POST_SECRET).send().await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert!(answer.body["refresh_token"].is_string());
    })
    .await;
}

/// RFC 6749 §2.3.1: "The authorization server MUST support the HTTP Basic
/// authentication scheme for authenticating clients that were issued a
/// client password": a client registered for the body may use Basic too.
#[tokio::test]
async fn a_client_registered_for_the_body_may_use_basic() {
    bounded(async {
        let oauth = server(true).await;
        let family = oauth.authorize(POST_ID, "read");
        let answer = call(Method::POST, &oauth.token_url())
            .header(AUTHORIZATION, &basic(POST_ID, POST_SECRET))
            .form(&refresh_form(&family.refresh_token))
            .send()
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(oauth.stats().refreshed, 1);
    })
    .await;
}

#[tokio::test]
async fn a_public_client_sends_only_its_client_id() {
    bounded(async {
        let oauth = server(true).await;
        let family = oauth.authorize(PUBLIC_ID, "write");
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut form = refresh_form(&family.refresh_token);
            form.extend_from_slice(extra);
            call(Method::POST, &oauth.token_url()).form(&form)
        };

        let answer = with(&[("client_id", PUBLIC_ID), ("client_secret", "x")])
            .send()
            .await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
        let answer = with(&[]).send().await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
        assert!(answer.headers.get(WWW_AUTHENTICATE).is_none());
        let answer = with(&[("client_secret", "x")]).send().await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");

        let answer = with(&[("client_id", PUBLIC_ID)]).send().await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["scope"], "write");
    })
    .await;
}

#[tokio::test]
async fn two_authentication_methods_at_once_are_an_invalid_request() {
    bounded(async {
        let oauth = server(true).await;
        let family = oauth.authorize(BASIC_ID, "read");
        let with_basic = |extra: &[(&'static str, &'static str)]| {
            let mut form = refresh_form(&family.refresh_token);
            form.extend_from_slice(extra);
            call(Method::POST, &oauth.token_url())
                .header(AUTHORIZATION, &basic(BASIC_ID, BASIC_SECRET))
                .form(&form)
        };

        let both = [("client_id", BASIC_ID), ("client_secret", BASIC_SECRET)];
        let answer = with_basic(&both).send().await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        let answer = with_basic(&[("client_id", POST_ID)]).send().await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(oauth.stats().refreshed, 0);

        // Naming the same client beside Basic is identification, not a
        // second method.
        let answer = with_basic(&[("client_id", BASIC_ID)]).send().await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    })
    .await;
}
