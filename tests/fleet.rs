//! Fleet mode across separate OS processes: replicas (this executable,
//! started again with `TTR_FLEET_ROLE` set) share one token through a real
//! `redis-server` on loopback, or through one token file, against one
//! OAuth2 token endpoint that rotates refresh tokens and revokes a whole
//! family on reuse.
//!
//! A custom harness (`harness = false`): the same binary is the test and
//! its replicas. Scenarios run one after another, each bounded; any failed
//! assertion fails the run. Without `redis-server` the Redis scenarios are
//! skipped with a message naming the Debian package (under `CI` they fail
//! instead: `.ci/run` installs it).

#[cfg(all(feature = "redis", feature = "file", feature = "encryption"))]
pub mod support;

#[cfg(all(feature = "redis", feature = "file", feature = "encryption"))]
fn main() {
    use support::fleet::{run_replica, ROLE};
    if std::env::var_os(ROLE).is_some() {
        return run_replica();
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(scenarios::run_all());
}

#[cfg(not(all(feature = "redis", feature = "file", feature = "encryption")))]
fn main() {
    eprintln!("tests/fleet: needs the `redis`, `file` and `encryption` features; skipped");
}

#[cfg(all(feature = "redis", feature = "file", feature = "encryption"))]
mod scenarios {
    use std::process::Child;
    use std::time::{Duration, Instant};

    use base64::Engine;

    use super::support::faults::InjectFaults;
    use super::support::fleet::{
        report, spawn_replica, ReplicaConfig, ReplicaReport, SharedStore, CLIENT_ID, CLIENT_SECRET,
    };
    use super::support::oauth2::{OAuth2Server, OAuth2Stats, RegisteredClient};
    use super::support::redis::RedisServer;
    use super::support::ApiServer;

    /// A fixed test key (32 bytes of 0x2a).
    const KEY: [u8; 32] = [42; 32];

    pub(super) async fn run_all() {
        let started = Instant::now();
        file_store_restart_resumes_with_the_rotated_refresh_token().await;
        three_processes_sharing_a_token_file_make_one_refresh_call_per_expiry().await;
        killed_file_lease_holder_is_taken_over_at_once().await;
        match RedisServer::start() {
            Some(redis) => {
                four_processes_make_one_refresh_call_per_expiry(&redis).await;
                drop(redis);
                killed_lease_holder_is_taken_over_after_the_lease_lapses().await;
                killed_after_the_idp_rotated_recovers_with_one_login().await;
                redis_going_down_leaves_each_process_refreshing_on_its_own().await;
            }
            None => eprintln!("tests/fleet: the Redis scenarios were SKIPPED"),
        }
        eprintln!(
            "tests/fleet: all scenarios passed in {:?}",
            started.elapsed()
        );
    }

    /// The servers of one scenario.
    struct World {
        idp: OAuth2Server,
        api: ApiServer,
    }

    impl World {
        async fn start(lifetime: Duration, rotate: bool) -> Self {
            let idp = OAuth2Server::builder()
                .client(RegisteredClient::secret_basic(CLIENT_ID, CLIENT_SECRET).scope("read"))
                .token_lifetime(lifetime)
                .rotate_refresh_tokens(rotate)
                .start()
                .await;
            let api = ApiServer::start(&idp).await;
            Self { idp, api }
        }

        /// Settings every replica shares: deployed with one credential.
        fn config(&self, lifetime: Duration) -> ReplicaConfig {
            let granted = self.idp.authorize(CLIENT_ID, "read");
            ReplicaConfig {
                token_url: self.idp.token_url(),
                api_url: self.api.url("/data"),
                prefix: format!("ttr-test-{}", std::process::id()),
                key: Some(base64::engine::general_purpose::STANDARD.encode(KEY)),
                initial: Some((granted.access_token, granted.refresh_token, lifetime)),
                workers: 4,
                refresh_timeout: Duration::from_secs(2),
                windows: (0.5, 0.2),
                login: true,
                ..ReplicaConfig::default()
            }
        }
    }

    fn spawn(n: usize, config: &ReplicaConfig) -> Vec<Child> {
        (0..n)
            .map(|i| spawn_replica(&format!("replica-{i}"), config, &[]))
            .collect()
    }

    /// Every replica's report, each waited for on its own thread; a replica
    /// that died without one fails the run.
    async fn reports(children: Vec<Child>, limit: Duration) -> Vec<ReplicaReport> {
        let waits: Vec<_> = children
            .into_iter()
            .map(|child| tokio::task::spawn_blocking(move || report(child, limit)))
            .collect();
        let mut reports = Vec::new();
        for wait in waits {
            let report = wait.await.expect("report thread");
            reports.push(report.expect("every replica reported"));
        }
        reports
    }

    fn assert_no_failures(reports: &[ReplicaReport]) {
        for (i, r) in reports.iter().enumerate() {
            assert!(r.ok > 0, "replica {i} sent nothing: {r:?}");
            assert_eq!(r.failed, 0, "replica {i} had failed requests: {r:?}");
        }
    }

    /// What every run of replicas sharing one store must show: no failed
    /// request, no refresh token presented twice, no login, at least
    /// `expiries` refresh calls, each made by exactly one replica and none
    /// early, and no store error. The tokens last 2 s.
    fn assert_one_refresh_call_per_expiry(
        world: &World,
        reports: &[ReplicaReport],
        scenario: &str,
        expiries: u64,
    ) {
        let idp = world.idp.stats();
        eprintln!("{scenario}: idp {idp:?}");
        for r in reports {
            eprintln!("  replica {r:?}");
        }
        assert_no_failures(reports);
        assert_eq!(idp.reuse_detected, 0, "no refresh token presented twice");
        assert_eq!(idp.invalid_grant, 0);
        assert_eq!(idp.client_credentials, 0, "nobody had to log in");
        assert!(
            idp.refreshed >= expiries,
            "at least {expiries} expiries: {}",
            idp.refreshed
        );
        let fetched: u64 = reports.iter().map(|r| r.stats.refresh_successes).sum();
        assert_eq!(
            fetched, idp.refreshed,
            "each refresh call made by exactly one replica"
        );
        assert!(reports.iter().all(|r| r.stats.store_errors == 0));

        // One token per refresh, each refreshed no sooner than its
        // half-life (1 s of 2): no expiry was refreshed twice, none early.
        let issued = world.idp.tokens().access_token_expiries();
        let gaps: Vec<_> = issued.windows(2).map(|w| w[1] - w[0]).collect();
        let shortest = gaps.iter().min().copied().unwrap_or_default();
        assert!(
            shortest >= Duration::from_millis(900),
            "two refreshes {shortest:?} apart: {gaps:?}"
        );
    }

    /// 4 processes, 2 s tokens, 12 s of traffic (6 lifetimes; a refresh at
    /// each half-life): exactly one refresh call per token, no reuse, no
    /// login, no failed request, and a Redis dump holds no credential.
    async fn four_processes_make_one_refresh_call_per_expiry(redis: &RedisServer) {
        let lifetime = Duration::from_secs(2);
        let world = World::start(lifetime, true).await;
        let config = ReplicaConfig {
            redis_url: Some(redis.url()),
            run_for: Duration::from_secs(12),
            ..world.config(lifetime)
        };
        let reports = reports(spawn(4, &config), Duration::from_secs(60)).await;
        assert_one_refresh_call_per_expiry(&world, &reports, "four processes", 5);
        assert!(
            reports.iter().all(|r| r.stats.adopted > 0),
            "everyone adopted"
        );

        let dump = redis_dump(&redis.url(), &config.prefix);
        for token in world.idp.tokens().issued() {
            assert!(
                !dump.windows(token.len()).any(|w| w == token.as_bytes()),
                "a credential is readable in Redis"
            );
        }
    }

    /// 3 processes keep their tokens in one file (no Redis), 2 s tokens,
    /// 8 s of traffic: the lock file beside it makes them refresh as one,
    /// exactly as through Redis. Without it, processes reaching the
    /// half-life together each refreshed from the same rotating refresh
    /// token, and the identity server revoked the family.
    async fn three_processes_sharing_a_token_file_make_one_refresh_call_per_expiry() {
        let lifetime = Duration::from_secs(2);
        let world = World::start(lifetime, true).await;
        let file = SharedStore::file("shared");
        let config = file.configure(ReplicaConfig {
            run_for: Duration::from_secs(8),
            ..world.config(lifetime)
        });
        let reports = reports(spawn(3, &config), Duration::from_secs(60)).await;
        assert_one_refresh_call_per_expiry(&world, &reports, "three processes, one file", 3);
        let adopters = reports.iter().filter(|r| r.stats.adopted > 0).count();
        assert!(
            adopters >= 2,
            "the others adopted from the file: {adopters}"
        );
    }

    /// Every value under `prefix`, as raw bytes.
    fn redis_dump(url: &str, prefix: &str) -> Vec<u8> {
        let client = redis::Client::open(url).expect("url");
        let mut conn = client.get_connection().expect("connection");
        let payload: Vec<u8> = redis::cmd("HGET")
            .arg(format!("{prefix}:tokens"))
            .arg("payload")
            .query(&mut conn)
            .expect("stored payload");
        assert!(!payload.is_empty());
        payload
    }

    /// 3 processes, 10 s tokens refreshed at 2 s; the IdP holds the first
    /// refresh request before doing any work, and the process holding the
    /// lease is killed meanwhile (the IdP drops its request with the
    /// connection). A survivor refreshes once the 6 s lease lapses; every
    /// request of the survivors succeeds and nothing was spent twice.
    async fn killed_lease_holder_is_taken_over_after_the_lease_lapses() {
        let redis = SharedStore::redis().expect("redis-server");
        let (idp, reports) = kill_the_lease_holder(false, redis, Duration::from_secs(1)).await;
        assert_taken_over(&idp, &reports);
        assert_eq!(idp.refreshed, 1, "one survivor completed the refresh");
    }

    /// The same with 3 processes sharing a token file, and a refresh
    /// timeout of 60 s: the lease's time to live is 301 s (3 calls and 2
    /// store calls of 60 s, and a second), so only its holder's death ends
    /// it within the 9 s run. The survivor that takes it over finds the
    /// holder gone from its lock on the liveness file, which the kernel let
    /// go of with the killed process; taken over at once, the refresh
    /// completes within the run.
    async fn killed_file_lease_holder_is_taken_over_at_once() {
        let file = SharedStore::file("killed");
        let (idp, reports) = kill_the_lease_holder(false, file, Duration::from_secs(60)).await;
        assert_taken_over(&idp, &reports);
    }

    /// A survivor completed the killed holder's refresh, each refresh was
    /// made by one survivor alone, and nothing failed or was spent twice.
    fn assert_taken_over(idp: &OAuth2Stats, reports: &[ReplicaReport]) {
        assert_no_failures(reports);
        assert!(idp.refreshed >= 1, "a survivor completed the refresh");
        assert_eq!(idp.reuse_detected, 0, "the killed refresh spent nothing");
        assert_eq!(idp.client_credentials, 0);
        let fetched: u64 = reports.iter().map(|r| r.stats.refresh_successes).sum();
        assert_eq!(fetched, idp.refreshed, "each by one survivor");
        assert!(
            reports.iter().any(|r| r.stats.adopted > 0),
            "the other survivor adopted its tokens"
        );
    }

    /// The same, but the IdP rotated the refresh token before the holder
    /// died with the answer: the rotated token died with it, so no protocol
    /// can refresh that family again. The successor's refresh is taken for
    /// reuse (the family is revoked), the store has nothing newer, and one
    /// login recovers the fleet: still no failed request.
    async fn killed_after_the_idp_rotated_recovers_with_one_login() {
        let redis = SharedStore::redis().expect("redis-server");
        let (idp, reports) = kill_the_lease_holder(true, redis, Duration::from_secs(1)).await;
        assert_no_failures(&reports);
        assert_eq!(idp.refreshed, 1, "only the dead holder's refresh");
        assert_eq!(
            idp.reuse_detected, 1,
            "the successor presented the spent token"
        );
        assert_eq!(idp.client_credentials, 1, "one login for the whole fleet");
        let logins: u64 = reports.iter().map(|r| r.stats.logins).sum();
        assert_eq!(logins, 1);
    }

    /// Runs 3 replicas sharing `shared` with `refresh_timeout`, kills the
    /// lease holder while the IdP holds its refresh (before the work, or
    /// after it when `rotated`), and returns the IdP's counters and the
    /// survivors' reports.
    async fn kill_the_lease_holder(
        rotated: bool,
        shared: SharedStore,
        refresh_timeout: Duration,
    ) -> (OAuth2Stats, Vec<ReplicaReport>) {
        let lifetime = Duration::from_secs(10);
        let world = World::start(lifetime, true).await;
        let config = shared.configure(ReplicaConfig {
            run_for: Duration::from_secs(9),
            // With 1 s, the lease is 3 calls x 1 s + 2 store calls x 1 s
            // + 1 s = 6 s.
            refresh_timeout,
            // Refresh at 2 s; requests wait only in the last second.
            windows: (0.8, 0.1),
            login: true,
            ..world.config(lifetime)
        });
        let hold = |d| {
            if rotated {
                world.idp.delay_refreshes(d)
            } else {
                world.idp.stall_refreshes(d)
            }
        };
        hold(Duration::from_secs(60));
        let mut children = spawn(3, &config);

        // Held before the work: waited for until the holder's request
        // has read its stall, so that lifting the stall before the kill
        // leaves it held, while a survivor taking over at once (a token
        // file) is not held. Held after the work: lifted only once the
        // holder is dead, or it would get its answer.
        let deadline = Instant::now() + Duration::from_secs(20);
        let started = || match rotated {
            false => world.idp.faults().stalled() > 0,
            true => world.idp.stats().token_calls > 0,
        };
        while !started() {
            assert!(Instant::now() < deadline, "no refresh started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !rotated {
            hold(Duration::ZERO);
        }
        let owner = shared.lease_owner(&config.prefix).expect("a lease holder");
        let pid: u32 = owner
            .split('-')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("owner starts with the pid");
        let holder = children
            .iter()
            .position(|c| c.id() == pid)
            .expect("the holder is one of ours");
        let mut killed = children.remove(holder);
        killed.kill().expect("holder killed");
        killed.wait().expect("holder reaped");
        if rotated {
            hold(Duration::ZERO);
        }
        eprintln!("killed lease holder {pid} in the middle of its refresh (rotated: {rotated})");

        let reports = reports(children, Duration::from_secs(60)).await;
        let idp = world.idp.stats();
        eprintln!("killed holder: idp {idp:?}");
        for r in &reports {
            eprintln!("  survivor {r:?}");
        }
        (idp, reports)
    }

    /// 3 processes on 2 s tokens (no rotation: without a store, replicas
    /// sharing a rotating refresh token would set off reuse detection,
    /// which is why fleet mode exists); Redis is killed after 4 s of 12.
    /// Every request succeeds, each process refreshing on its own.
    async fn redis_going_down_leaves_each_process_refreshing_on_its_own() {
        let mut redis = RedisServer::start().expect("redis-server");
        let lifetime = Duration::from_secs(2);
        let world = World::start(lifetime, false).await;
        let config = ReplicaConfig {
            redis_url: Some(redis.url()),
            run_for: Duration::from_secs(12),
            refresh_timeout: Duration::from_secs(1),
            ..world.config(lifetime)
        };
        let children = spawn(3, &config);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let before = world.idp.stats();
        redis.stop();
        eprintln!("redis stopped after 4 s; idp so far {before:?}");

        let reports = reports(children, Duration::from_secs(60)).await;
        let idp = world.idp.stats();
        eprintln!("redis down: idp {idp:?}");
        for r in &reports {
            eprintln!("  replica {r:?}");
        }
        assert_no_failures(&reports);
        for (i, r) in reports.iter().enumerate() {
            assert!(
                r.stats.store_errors > 0,
                "replica {i} noticed Redis was gone"
            );
            assert!(
                r.stats.refresh_successes > 0,
                "replica {i} refreshed on its own"
            );
        }
        assert!(
            idp.refreshed >= before.refreshed + 3 * 3,
            "each of 3 replicas refreshed about every second for 8 s: {} then {}",
            before.refreshed,
            idp.refreshed
        );
    }

    /// One process with a sealed FileStore runs through two rotations and
    /// stops; after its tokens expired a new process starts with no tokens,
    /// resumes from the file with the rotated refresh token and never logs
    /// in. The file is private and holds no credential in the clear.
    async fn file_store_restart_resumes_with_the_rotated_refresh_token() {
        let lifetime = Duration::from_secs(2);
        let world = World::start(lifetime, true).await;
        let file = SharedStore::file("restart");
        let path = file.path().expect("a token file");
        let first = file.configure(ReplicaConfig {
            run_for: Duration::from_millis(3_500),
            workers: 2,
            ..world.config(lifetime)
        });
        let before = reports(spawn(1, &first), Duration::from_secs(30)).await;
        let before = before[0];
        assert_no_failures(&[before]);
        let rotated = world.idp.stats().refreshed;
        assert!(rotated >= 2, "the first run rotated: {rotated}");

        // Let the stored access token expire.
        tokio::time::sleep(lifetime).await;
        let second = ReplicaConfig {
            initial: None,
            run_for: Duration::from_secs(1),
            ..first.clone()
        };
        let after = reports(spawn(1, &second), Duration::from_secs(30)).await;
        let after = after[0];
        let idp = world.idp.stats();
        eprintln!("file store restart: idp {idp:?}; before {before:?}; after {after:?}");
        assert_no_failures(&[after]);
        assert_eq!(
            idp.client_credentials, 0,
            "the restarted process never logged in"
        );
        assert_eq!(after.stats.logins, 0);
        assert_eq!((idp.invalid_grant, idp.reuse_detected), (0, 0));
        assert!(
            after.stats.refresh_successes >= 1,
            "refreshed from the file"
        );
        assert!(idp.refreshed > rotated);

        let contents = std::fs::read(&path).expect("token file");
        for token in world.idp.tokens().issued() {
            assert!(
                !contents.windows(token.len()).any(|w| w == token.as_bytes()),
                "a credential is readable in the token file"
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
