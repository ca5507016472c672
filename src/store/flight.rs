//! Single-flight: the first caller for a key leads (does the work); later callers follow and
//! wait for the leader's outcome. A leader dropped without finishing releases its followers with
//! `None`, so they can compete again (pingora's cache lock, reduced to what modgate needs).
//! A leader may also publish a value before it finishes (a fill in progress that followers can
//! read while it is written); followers that arrive later still see it, until the outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// In-flight work by key.
#[derive(Debug)]
pub struct Flights<T> {
    map: Mutex<HashMap<String, watch::Receiver<Option<T>>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            map: Mutex::new(HashMap::new()),
        }
    }
}

/// The caller's role for a key.
#[derive(Debug)]
pub enum Join<T> {
    Leader(Leader<T>),
    Follower(Follower<T>),
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    /// Leads `key` if nobody does, else follows the current leader.
    pub fn join(self: &Arc<Self>, key: &str) -> Join<T> {
        let mut map = self.map.lock().expect("flight map poisoned");
        if let Some(rx) = map.get(key)
            && rx.has_changed().is_ok()
        {
            return Join::Follower(Follower { rx: rx.clone() });
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.to_string(), rx);
        Join::Leader(Leader {
            key: key.to_string(),
            flights: self.clone(),
            tx: Some(tx),
        })
    }

    /// Number of keys in flight.
    pub fn len(&self) -> usize {
        self.map.lock().expect("flight map poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The one caller doing the work for a key.
#[derive(Debug)]
pub struct Leader<T> {
    key: String,
    flights: Arc<Flights<T>>,
    tx: Option<watch::Sender<Option<T>>>,
}

impl<T> Leader<T> {
    /// Shows followers `value` now, without ending the flight: those waiting wake with it, and
    /// later ones get it until [`finish`](Self::finish) replaces it.
    pub fn publish(&self, value: T) {
        if let Some(tx) = &self.tx {
            tx.send_replace(Some(value));
        }
    }

    /// Publishes the outcome to every follower and ends the flight.
    pub fn finish(mut self, outcome: T) {
        self.remove();
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(outcome));
        }
    }

    fn remove(&self) {
        let mut map = self.flights.map.lock().expect("flight map poisoned");
        if let Some(rx) = map.get(&self.key)
            && self
                .tx
                .as_ref()
                .is_some_and(|tx| rx.same_channel(&tx.subscribe()))
        {
            map.remove(&self.key);
        }
    }
}

impl<T> Drop for Leader<T> {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.remove();
            // Dropping the sender wakes followers with "abandoned".
        }
    }
}

/// A caller waiting for a leader.
#[derive(Debug)]
pub struct Follower<T> {
    rx: watch::Receiver<Option<T>>,
}

impl<T: Clone> Follower<T> {
    /// The leader's outcome, or `None` if the leader gave up without one.
    pub async fn wait(mut self) -> Option<T> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_many_followers() {
        let f: Arc<Flights<u32>> = Arc::default();
        let Join::Leader(leader) = f.join("k") else {
            panic!("first caller leads")
        };
        let mut followers = vec![];
        for _ in 0..5 {
            let Join::Follower(fl) = f.join("k") else {
                panic!("later callers follow")
            };
            followers.push(tokio::spawn(fl.wait()));
        }
        assert!(matches!(f.join("other"), Join::Leader(_)));
        leader.finish(7);
        for fl in followers {
            assert_eq!(fl.await.unwrap(), Some(7));
        }
        assert!(
            matches!(f.join("k"), Join::Leader(_)),
            "a finished flight is gone"
        );
    }

    #[tokio::test]
    async fn a_published_value_reaches_waiting_and_later_followers_until_the_outcome() {
        let f: Arc<Flights<u32>> = Arc::default();
        let Join::Leader(leader) = f.join("k") else {
            panic!()
        };
        let Join::Follower(early) = f.join("k") else {
            panic!()
        };
        let early = tokio::spawn(early.wait());
        leader.publish(1);
        assert_eq!(early.await.unwrap(), Some(1));
        let Join::Follower(late) = f.join("k") else {
            panic!("a published value does not end the flight")
        };
        assert_eq!(late.wait().await, Some(1));
        leader.finish(2);
        assert!(matches!(f.join("k"), Join::Leader(_)));
    }

    #[tokio::test]
    async fn dropped_leader_releases_followers() {
        let f: Arc<Flights<u32>> = Arc::default();
        let Join::Leader(leader) = f.join("k") else {
            panic!()
        };
        let Join::Follower(fl) = f.join("k") else {
            panic!()
        };
        drop(leader);
        assert_eq!(fl.wait().await, None);
        assert!(f.is_empty());
    }
}
