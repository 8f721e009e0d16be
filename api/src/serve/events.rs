//! `GET /events`: container events (create, start, die, destroy; kill,
//! stop, restart, pause and unpause asked for through this server), streamed as
//! newline-delimited JSON, with `since`, `until` and `filters` (type,
//! container, event, label) as Docker serves them; compose follows them.
//!
//! husk has no daemon that sees every change happen, so a watcher thread
//! compares the containers' states every [`WATCH_INTERVAL`]: a container
//! made or removed by any front end (`husk run`, another server) shows too.
//! A handler that needs the order right (`die` before `stop`) compares at
//! once ([`EventLog::refresh`]). The last [`KEEP`] events are kept for
//! `since`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::{channel, lock, ApiError, Ctx, Query, Reply};
use crate::container::{ContainerConfig, Containers, State, Status};

/// How often the watcher looks at the containers.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// How many past events are kept for `since`.
pub const KEEP: usize = 1024;

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `create`, `start`, `die`, `destroy`, `kill`, `stop`, `restart`,
    /// `pause`, `unpause`.
    pub action: &'static str,
    /// The container's id.
    pub id: String,
    /// name, image, the labels, exitCode (die).
    pub attributes: BTreeMap<String, String>,
    /// Nanoseconds since the epoch.
    pub time_nano: u128,
}

impl Event {
    /// Docker's JSON for it.
    pub fn to_json(&self) -> Value {
        json!({
            "status": self.action,
            "id": self.id,
            "from": self.attributes.get("image").cloned().unwrap_or_default(),
            "Type": "container",
            "Action": self.action,
            "Actor": {"ID": self.id, "Attributes": self.attributes},
            "scope": "local",
            "time": u64::try_from(self.time_nano / 1_000_000_000).unwrap_or(u64::MAX),
            "timeNano": u64::try_from(self.time_nano).unwrap_or(u64::MAX),
        })
    }
}

/// The events seen so far and their subscribers.
#[derive(Debug)]
pub struct EventLog {
    past: Mutex<VecDeque<Event>>,
    live: broadcast::Sender<Event>,
    /// The containers as last compared (`None` before the first look).
    seen: Mutex<Option<Looked>>,
}

type Looked = HashMap<String, (Seen, BTreeMap<String, String>)>;

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            past: Mutex::new(VecDeque::new()),
            live: broadcast::channel(KEEP).0,
            seen: Mutex::new(None),
        }
    }
}

impl EventLog {
    /// Compares the containers with the last look and publishes what
    /// changed (the first look only records them).
    pub fn refresh(&self, cs: &Containers) {
        let mut seen = lock(&self.seen);
        let (now, codes) = look(cs);
        if let Some(before) = seen.as_ref() {
            for e in diff(before, &now, &codes, now_nano()) {
                self.publish(e);
            }
        }
        *seen = Some(now);
    }

    /// Publishes `action` for container `c`, with `extra` attributes.
    pub fn action(&self, action: &'static str, c: &ContainerConfig, extra: &[(&str, String)]) {
        let mut attributes = attributes(c);
        for (k, v) in extra {
            attributes.insert((*k).to_string(), v.clone());
        }
        self.publish(Event {
            action,
            id: c.id.clone(),
            attributes,
            time_nano: now_nano(),
        });
    }

    /// Records `e` and sends it to the subscribers.
    pub fn publish(&self, e: Event) {
        let mut past = lock(&self.past);
        if past.len() >= KEEP {
            past.pop_front();
        }
        past.push_back(e.clone());
        let _ = self.live.send(e);
    }

    /// The past events and a subscription to the next ones: under the
    /// lock [`EventLog::publish`] holds while it sends, so no event is
    /// lost between the two or comes in both.
    fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let past = lock(&self.past);
        let rx = self.live.subscribe();
        (past.iter().cloned().collect(), rx)
    }
}

/// What the watcher last saw of a container.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    running: bool,
    started_at: Option<String>,
}

/// Compares two looks at the containers: the events between them.
fn diff(
    before: &HashMap<String, (Seen, BTreeMap<String, String>)>,
    now: &HashMap<String, (Seen, BTreeMap<String, String>)>,
    exit_codes: &HashMap<String, i32>,
    time_nano: u128,
) -> Vec<Event> {
    let mut out = Vec::new();
    let mut ev = |action, id: &str, attrs: &BTreeMap<String, String>| {
        let mut attributes = attrs.clone();
        if action == "die" {
            let code = exit_codes.get(id).copied().unwrap_or(0);
            attributes.insert("exitCode".into(), code.to_string());
        }
        out.push(Event {
            action,
            id: id.to_string(),
            attributes,
            time_nano,
        });
    };
    let mut ids: Vec<&String> = now.keys().collect();
    ids.sort();
    for id in ids {
        let (seen, attrs) = &now[id];
        let was = before.get(id).map(|(s, _)| s);
        if was.is_none() {
            ev("create", id, attrs);
        }
        let restarted = was.is_some_and(|w| w.started_at != seen.started_at);
        let was_running = was.is_some_and(|w| w.running);
        if was_running && (!seen.running || restarted) {
            ev("die", id, attrs);
        }
        if seen.running && (!was_running || restarted) {
            ev("start", id, attrs);
        }
    }
    for (id, (seen, attrs)) in before {
        if !now.contains_key(id) {
            if seen.running {
                ev("die", id, attrs);
            }
            ev("destroy", id, attrs);
        }
    }
    out
}

/// A container's attributes: name, image and labels.
fn attributes(c: &ContainerConfig) -> BTreeMap<String, String> {
    let mut a = c.labels.clone();
    a.insert("name".into(), c.name.clone());
    a.insert("image".into(), c.image.clone());
    a
}

type Look = (
    HashMap<String, (Seen, BTreeMap<String, String>)>,
    HashMap<String, i32>,
);

/// One look at every container.
fn look(cs: &Containers) -> Look {
    let mut seen = HashMap::new();
    let mut codes = HashMap::new();
    for (c, s) in cs.list().unwrap_or_default() {
        if let Some(code) = s.exit_code {
            codes.insert(c.id.clone(), code);
        }
        seen.insert(c.id.clone(), (observe(&s), attributes(&c)));
    }
    (seen, codes)
}

fn observe(s: &State) -> Seen {
    Seen {
        running: s.status == Status::Running,
        started_at: s.started_at.clone(),
    }
}

/// Now, in nanoseconds since the epoch.
pub(super) fn now_nano() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Watches the containers of `data_dir` for as long as the server runs.
pub fn watch(data_dir: PathBuf, ctx: Arc<Ctx>) {
    std::thread::spawn(move || {
        let Ok(cs) = Containers::open(&data_dir) else {
            log::warn!(
                "events: cannot open the containers of {}",
                data_dir.display()
            );
            return;
        };
        loop {
            ctx.events.refresh(&cs);
            std::thread::sleep(WATCH_INTERVAL);
        }
    });
}

/// The `filters` of an events request.
#[derive(Debug, Default)]
struct Filters(HashMap<String, Vec<String>>);

impl Filters {
    fn parse(q: &Query) -> Result<Filters, ApiError> {
        let Some(text) = q.get("filters").filter(|t| !t.is_empty()) else {
            return Ok(Filters::default());
        };
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ApiError::BadParameter(format!("invalid filters: {e}")))?;
        let mut map = HashMap::new();
        for (k, vals) in v.as_object().into_iter().flatten() {
            // Either ["a", "b"] or {"a": true} (older clients).
            let list: Vec<String> = match vals {
                Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
                Value::Object(o) => o.keys().cloned().collect(),
                _ => Vec::new(),
            };
            map.insert(k.clone(), list);
        }
        Ok(Filters(map))
    }

    fn matches(&self, e: &Event) -> bool {
        self.0.iter().all(|(k, want)| {
            want.is_empty()
                || want.iter().any(|w| match k.as_str() {
                    "type" => w == "container",
                    "event" => w == e.action,
                    "container" => {
                        e.id.starts_with(w.as_str())
                            || e.attributes.get("name").is_some_and(|n| n == w)
                    }
                    "image" => e.attributes.get("image").is_some_and(|i| i == w),
                    "label" => match w.split_once('=') {
                        Some((lk, lv)) => e.attributes.get(lk).is_some_and(|v| v == lv),
                        None => e.attributes.contains_key(w.as_str()),
                    },
                    _ => false,
                })
        })
    }
}

/// A `since`/`until` value: seconds since the epoch, maybe with a
/// fraction (`1700000000.5`), as nanoseconds.
pub(super) fn parse_time(q: &Query, k: &str) -> Result<Option<u128>, ApiError> {
    let Some(v) = q.get(k).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let bad = || ApiError::BadParameter(format!("invalid {k} {v:?}"));
    let secs: u128 = secs.parse().map_err(|_| bad())?;
    let digits: String = frac.chars().take(9).collect();
    let nanos: u128 = if digits.is_empty() {
        0
    } else {
        let n: u128 = digits.parse().map_err(|_| bad())?;
        n * 10u128.pow(9 - u32::try_from(digits.len()).unwrap_or(9))
    };
    Ok(Some(secs * 1_000_000_000 + nanos))
}

/// `GET /events?since=&until=&filters=`.
pub async fn events(ctx: Arc<Ctx>, q: Query) -> Reply {
    let filters = Filters::parse(&q)?;
    let since = parse_time(&q, "since")?;
    let until = parse_time(&q, "until")?;
    let (resp, tx) = channel("application/json");
    let (past, mut rx) = ctx.events.subscribe();
    tokio::spawn(async move {
        let send = |e: &Event| {
            let mut line = e.to_json().to_string();
            line.push('\n');
            Bytes::from(line)
        };
        for e in past
            .iter()
            .filter(|e| since.is_some_and(|s| e.time_nano >= s))
        {
            if until.is_some_and(|u| e.time_nano > u) || !filters.matches(e) {
                continue;
            }
            if tx.send(send(e)).await.is_err() {
                return;
            }
        }
        loop {
            let left = match until {
                Some(u) => {
                    let n = now_nano();
                    if n >= u {
                        return;
                    }
                    Duration::from_nanos(u64::try_from(u - n).unwrap_or(u64::MAX))
                }
                None => Duration::from_secs(3600),
            };
            let e = match tokio::time::timeout(left, rx.recv()).await {
                Ok(Ok(e)) => e,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
                Err(_) if until.is_some() => return,
                Err(_) => continue,
            };
            if filters.matches(&e) && tx.send(send(&e)).await.is_err() {
                return;
            }
        }
    });
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(running: bool, started: &str) -> Seen {
        Seen {
            running,
            started_at: Some(started.into()),
        }
    }

    fn state(entries: &[(&str, Seen)]) -> HashMap<String, (Seen, BTreeMap<String, String>)> {
        entries
            .iter()
            .map(|(id, s)| {
                let attrs = BTreeMap::from([("name".to_string(), format!("n-{id}"))]);
                (id.to_string(), (s.clone(), attrs))
            })
            .collect()
    }

    fn actions(evs: &[Event]) -> Vec<String> {
        evs.iter()
            .map(|e| format!("{} {}", e.action, e.id))
            .collect()
    }

    #[test]
    fn transitions_become_events() {
        let codes = HashMap::from([("b".to_string(), 3)]);
        let empty = state(&[]);
        let one = state(&[("a", seen(false, ""))]);
        assert_eq!(actions(&diff(&empty, &one, &codes, 1)), ["create a"]);
        let running = state(&[("a", seen(true, "t1")), ("b", seen(true, "t1"))]);
        assert_eq!(
            actions(&diff(&one, &running, &codes, 2)),
            ["start a", "create b", "start b"]
        );
        let b_exited = state(&[("a", seen(true, "t1")), ("b", seen(false, "t1"))]);
        let evs = diff(&running, &b_exited, &codes, 3);
        assert_eq!(actions(&evs), ["die b"]);
        assert_eq!(evs[0].attributes["exitCode"], "3");
        // A restart between two looks: die then start.
        let restarted = state(&[("a", seen(true, "t2")), ("b", seen(false, "t1"))]);
        assert_eq!(
            actions(&diff(&b_exited, &restarted, &codes, 4)),
            ["die a", "start a"]
        );
        assert_eq!(
            actions(&diff(&restarted, &empty, &codes, 5)).len(),
            3,
            "die a, destroy a, destroy b"
        );
    }

    #[test]
    fn filters_and_times() {
        let e = Event {
            action: "start",
            id: "abcdef".into(),
            attributes: BTreeMap::from([
                ("name".to_string(), "web".to_string()),
                ("image".to_string(), "busybox".to_string()),
                ("com.docker.compose.project".to_string(), "p".to_string()),
            ]),
            time_nano: 1_700_000_000_500_000_000,
        };
        let f = |s: &str| Filters::parse(&Query::parse(Some(&format!("filters={s}")))).unwrap();
        assert!(f("").matches(&e));
        assert!(f(r#"{"type":["container"],"event":["start","die"]}"#).matches(&e));
        assert!(!f(r#"{"event":["die"]}"#).matches(&e));
        assert!(f(r#"{"container":["web"]}"#).matches(&e));
        assert!(f(r#"{"container":["abc"]}"#).matches(&e));
        assert!(f(r#"{"label":["com.docker.compose.project=p"]}"#).matches(&e));
        assert!(f(r#"{"label":{"com.docker.compose.project":true}}"#).matches(&e));
        assert!(!f(r#"{"label":["com.docker.compose.project=q"]}"#).matches(&e));
        assert!(Filters::parse(&Query::parse(Some("filters={nope"))).is_err());
        let q = Query::parse(Some("since=1700000000.5&until=1700000001&x=abc"));
        assert_eq!(
            parse_time(&q, "since").unwrap(),
            Some(1_700_000_000_500_000_000)
        );
        assert_eq!(
            parse_time(&q, "until").unwrap(),
            Some(1_700_000_001_000_000_000)
        );
        assert_eq!(parse_time(&q, "nope").unwrap(), None);
        assert!(parse_time(&q, "x").is_err());
        let j = e.to_json();
        assert_eq!(j["Actor"]["Attributes"]["name"], "web");
        assert_eq!(j["time"], 1_700_000_000u64);
        assert_eq!(j["Type"], "container");
    }

    #[test]
    fn the_log_keeps_the_last_events() {
        let log = EventLog::default();
        for i in 0..KEEP + 5 {
            log.publish(Event {
                action: "create",
                id: i.to_string(),
                attributes: BTreeMap::new(),
                time_nano: i as u128,
            });
        }
        let (past, _) = log.subscribe();
        assert_eq!(past.len(), KEEP);
        assert_eq!(past[0].id, "5");
    }

    #[test]
    fn a_refresh_publishes_changes_before_the_handlers_own_event() {
        let d = tempfile::tempdir().unwrap();
        let cs = Containers::open(d.path()).unwrap();
        let log = EventLog::default();
        log.refresh(&cs); // the first look only records
        let id = "a".repeat(64);
        let c: ContainerConfig = serde_json::from_str(&format!(
            r#"{{"id":"{id}","name":"web","image":"busybox","labels":{{"app":"x"}}}}"#
        ))
        .unwrap();
        let h = cs.create(&c).unwrap();
        log.refresh(&cs);
        log.action("kill", &c, &[("signal", "15".into())]);
        cs.remove(&h).unwrap();
        log.refresh(&cs);
        log.action("stop", &c, &[]);
        let (past, _) = log.subscribe();
        let what: Vec<String> = past.iter().map(|e| e.action.to_string()).collect();
        assert_eq!(what, ["create", "kill", "destroy", "stop"]);
        let kill = &past[1];
        assert_eq!(
            kill.attributes.get("signal").map(String::as_str),
            Some("15")
        );
        assert_eq!(kill.attributes.get("name").map(String::as_str), Some("web"));
        assert_eq!(kill.attributes.get("app").map(String::as_str), Some("x"));
        assert!(past.windows(2).all(|w| w[0].time_nano <= w[1].time_nano));
    }
}
