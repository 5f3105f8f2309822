//! Bench settings from the environment.

/// The number in the environment variable `name`, or `default` if it is
/// not set. A value that is not a number stops the bench with its name,
/// rather than running quietly with the default.
pub fn number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
        Err(_) => default,
    }
}
