//! Process context shared between events and serialized once.
//!
//! The process table gives the same context to many events: a process's
//! fork, exec, exit and counts events carry the same `process`; every
//! child of one parent carries the same `parent` and, on exec, the same
//! `ancestry`. Cloning and serializing these anew for each event was most
//! of the agent's CPU under a fork+exec storm. A [`Shared`] value is
//! reference-counted, so handing it to another event copies a pointer, and
//! it keeps its JSON, made the first time it is written.
//!
//! Changing a shared value ([`DerefMut`](std::ops::DerefMut)) gives the
//! changer its own copy without the stored JSON, so the JSON written is
//! always that of the value itself.

use std::{
    ops::{Deref, DerefMut},
    sync::{Arc, OnceLock},
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A reference-counted value that keeps its JSON. Reads, compares,
/// prints and (de)serializes as the value.
pub struct Shared<T>(Arc<Inner<T>>);

struct Inner<T> {
    value: T,
    /// `None` inside: the value could not be serialized; writing it
    /// again reports why.
    json: OnceLock<Option<Box<RawValue>>>,
}

impl<T> Shared<T> {
    /// Shares `value`.
    pub fn new(value: T) -> Self {
        Self(Arc::new(Inner {
            value,
            json: OnceLock::new(),
        }))
    }

    /// Both are the same shared value (not merely equal ones).
    pub fn same(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl<T: Serialize> Shared<T> {
    /// The value's JSON, made on first use.
    fn json(&self) -> Option<&RawValue> {
        self.0
            .json
            .get_or_init(|| serde_json::value::to_raw_value(&self.0.value).ok())
            .as_deref()
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0.value
    }
}

impl<T: Clone> DerefMut for Shared<T> {
    /// The value, made this holder's own (cloned if it is shared), without
    /// the stored JSON.
    fn deref_mut(&mut self) -> &mut T {
        let inner = Arc::make_mut(&mut self.0);
        inner.json = OnceLock::new();
        &mut inner.value
    }
}

impl<T: Clone> Clone for Inner<T> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            json: OnceLock::new(),
        }
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> From<T> for Shared<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl<T: Default> Default for Shared<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        Self::same(self, other) || self.0.value == other.0.value
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.value.fmt(f)
    }
}

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The stored JSON is text for serde_json's serializers (the only
        // ones events are written with); anything else gets the value.
        if serializer.is_human_readable()
            && let Some(json) = self.json()
        {
            return json.serialize(serializer);
        }
        self.0.value.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Ancestor, Detail, Event, ExitDetail, Process, Timestamp};

    fn process() -> Process {
        Process {
            pid: 20,
            ppid: 10,
            comm: "tr\"ue\n".into(),
            exe: Some(b"/bin/\xfftrue".as_slice().into()),
            args: vec!["true".into(), "--x".into()],
            ..Default::default()
        }
    }

    fn event(process: Shared<Process>) -> Event {
        let mut e = Event::new(Timestamp(7), Detail::Exit(ExitDetail::default()));
        e.process = Some(process);
        e.parent = Some(
            Process {
                pid: 10,
                comm: "sh".into(),
                ..Default::default()
            }
            .into(),
        );
        e.ancestry = Shared::new(vec![Ancestor {
            pid: 10,
            comm: "sh".into(),
            ..Default::default()
        }]);
        e
    }

    /// An event's JSON through `to_string` and through `to_value`.
    fn json(e: &Event) -> (String, serde_json::Value) {
        (
            serde_json::to_string(e).unwrap(),
            serde_json::to_value(e).unwrap(),
        )
    }

    #[test]
    fn a_shared_value_writes_the_json_of_the_value() {
        let shared = Shared::new(process());
        let plain = serde_json::to_string(&process()).unwrap();
        assert_eq!(serde_json::to_string(&shared).unwrap(), plain);
        // Once made, the stored JSON is what is written, also inside an
        // event (a map, with the detail flattened into it).
        assert_eq!(shared.json().unwrap().get(), plain);
        let (a, b) = (event(shared.clone()), event(shared.clone()));
        assert!(Shared::same(a.process.as_ref().unwrap(), &shared));
        assert_eq!(json(&a), json(&b));
        assert_eq!(json(&a), json(&event(Shared::new(process()))));
        let back: Event = serde_json::from_str(&json(&a).0).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn changing_a_shared_value_changes_only_that_holder_and_its_json() {
        let shared = Shared::new(process());
        let before = serde_json::to_string(&shared).unwrap();
        let mut e = event(shared.clone());
        let (p, a) = (e.process.as_mut().unwrap(), &mut e.ancestry);
        p.exe = Some("/bin/other".into());
        a[0].comm = "bash".into();
        assert!(!Shared::same(e.process.as_ref().unwrap(), &shared));
        assert_eq!(serde_json::to_string(&shared).unwrap(), before);
        let written = json(&e).0;
        for changed in [r#""exe":"/bin/other""#, r#""comm":"bash""#] {
            assert!(written.contains(changed), "{changed} in {written}");
        }
        // A holder that is the only one changes in place, and still loses
        // the stored JSON.
        let mut only = Shared::new(process());
        let _ = serde_json::to_string(&only).unwrap();
        only.uid = 1000;
        assert!(
            serde_json::to_string(&only)
                .unwrap()
                .contains(r#""uid":1000"#)
        );
    }
}
