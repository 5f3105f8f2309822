//! The `grpc-timeout` header: `TimeoutValue TimeoutUnit`, at most eight
//! ASCII digits and one of `H`, `M`, `S`, `m`, `u`, `n` (gRPC over HTTP/2,
//! "Requests").

use std::time::Duration;

use http::{HeaderName, HeaderValue};

/// The header's name, made once: a name given as a string is parsed
/// again at each lookup (see `classify::GRPC_STATUS`).
pub(crate) static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The largest value the header may carry: eight digits.
const MAX_VALUE: u128 = 99_999_999;

/// The timeout `value` gives, or `None` if it does not follow the grammar,
/// read as tonic's channel reads it: its number parser also takes a
/// leading `+`, counted among the eight characters.
pub(crate) fn parse(value: &HeaderValue) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (unit, number) = bytes.split_last()?;
    if number.len() > 8 {
        return None;
    }
    let digits = number.strip_prefix(b"+").unwrap_or(number);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount = digits
        .iter()
        .fold(0u64, |sum, digit| sum * 10 + u64::from(digit - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// `timeout` in the most precise unit that fits eight digits, rounded down,
/// and at least one nanosecond: the grammar asks for a positive value, and
/// a call sent this late is failed by its own deadline anyway.
pub(crate) fn encode(timeout: Duration) -> HeaderValue {
    let timeout = timeout.max(Duration::from_nanos(1));
    let units: [(u128, char); 6] = [
        (timeout.as_nanos(), 'n'),
        (timeout.as_micros(), 'u'),
        (timeout.as_millis(), 'm'),
        (u128::from(timeout.as_secs()), 'S'),
        (u128::from(timeout.as_secs() / 60), 'M'),
        (u128::from(timeout.as_secs() / 3600), 'H'),
    ];
    let (amount, unit) = units
        .into_iter()
        .find(|(amount, _)| *amount <= MAX_VALUE)
        .unwrap_or((MAX_VALUE, 'H'));
    HeaderValue::try_from(format!("{amount}{unit}")).expect("digits and a letter")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parsed(text: &str) -> Option<Duration> {
        parse(&HeaderValue::from_str(text).unwrap())
    }

    #[test]
    fn reads_every_unit() {
        assert_eq!(parsed("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parsed("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parsed("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parsed("500m"), Some(Duration::from_millis(500)));
        assert_eq!(parsed("30000000u"), Some(Duration::from_secs(30)));
        assert_eq!(parsed("99999999n"), Some(Duration::from_nanos(99_999_999)));
        // As tonic's channel reads it.
        assert_eq!(parsed("+5S"), Some(Duration::from_secs(5)));
    }

    #[test]
    fn refuses_what_the_grammar_does_not_allow() {
        for text in [
            "",
            "m",
            "123456789m",
            "12",
            "1s",
            "-1S",
            "1 S",
            "+S",
            "++1S",
            "+12345678m",
            "1.5S",
        ] {
            assert_eq!(parsed(text), None, "{text:?}");
        }
    }

    #[test]
    fn writes_the_most_precise_unit_that_fits() {
        assert_eq!(encode(Duration::from_nanos(1500)), "1500n");
        assert_eq!(encode(Duration::from_millis(500)), "500000u");
        assert_eq!(encode(Duration::from_secs(30)), "30000000u");
        assert_eq!(encode(Duration::from_secs(3600)), "3600000m");
        assert_eq!(encode(Duration::ZERO), "1n");
        assert_eq!(encode(Duration::MAX), "99999999H");
    }

    proptest! {
        /// What is written reads back as at most the timeout (never a
        /// later deadline than the caller's), and short of it by under one
        /// unit: past nanoseconds, a unit is at most 1/100,000 of a value
        /// (a step of 1,000 from eight digits leaves at least six).
        #[test]
        fn round_trips_rounding_down(nanos in 1u64..u64::MAX) {
            let timeout = Duration::from_nanos(nanos);
            let read = parse(&encode(timeout)).expect("what is written parses");
            prop_assert!(read <= timeout);
            prop_assert!(timeout - read <= timeout / 100_000);
        }
    }
}
