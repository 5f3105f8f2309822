//! The per-IP limit of seed 002 ("More than 5 requests in 1 minute" →
//! 429), which the Cognito-style identity server applies to refreshes.

use std::net::{IpAddr, Ipv4Addr};

use tokio::time::Instant;

use super::*;
use crate::support::rate_limit::RateLimiter;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[test]
fn refused_requests_count_against_the_limit() {
    let limiter = RateLimiter::new(2, Duration::from_secs(60));
    let start = Instant::now();
    let at = |secs: u64| start + Duration::from_secs(secs);

    assert!(limiter.admit(CLIENT, at(0)));
    assert!(limiter.admit(CLIENT, at(10)));
    assert!(!limiter.admit(CLIENT, at(20)), "a third in the minute");
    // The request at 0 s has left the window, but the refused one at 20 s
    // has not: two requests in the last minute, so this one is refused too.
    assert!(!limiter.admit(CLIENT, at(65)));
    // Past 80 s only the refused one at 65 s is in the window.
    assert!(limiter.admit(CLIENT, at(90)));
}

#[test]
fn each_ip_has_its_own_limit() {
    let limiter = RateLimiter::new(1, Duration::from_secs(60));
    let now = Instant::now();
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    assert!(limiter.admit(CLIENT, now));
    assert!(!limiter.admit(CLIENT, now));
    assert!(limiter.admit(other, now));
}
