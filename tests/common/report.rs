//! What an oracle test found wrong, gathered over one phase and reported at
//! once, with the seed that replays it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{Debug, Display};

use serde_json::Value;

use super::rng::Seed;

pub struct Report {
    phase: String,
    seed: Seed,
    /// Who judges the exporter's figures (`ss`, `ss and nstat`).
    judge: &'static str,
    /// What every figure is about, for the line that says all agree.
    subject: &'static str,
    problems: Vec<String>,
}

impl Report {
    pub fn new(
        phase: impl Into<String>,
        seed: Seed,
        judge: &'static str,
        subject: &'static str,
    ) -> Report {
        Report {
            phase: phase.into(),
            seed,
            judge,
            subject,
            problems: Vec::new(),
        }
    }

    pub fn fail(&mut self, problem: impl Into<String>) {
        self.problems.push(problem.into());
    }

    pub fn eq<T: PartialEq + Debug>(&mut self, what: impl Display, ours: T, judged: T) {
        if ours != judged {
            let judge = self.judge;
            self.fail(format!("{what}: ours {ours:?}, {judge} {judged:?}"));
        }
    }

    /// `ours` read between two readings of the judge, `lo` before and `hi`
    /// after.
    pub fn within(&mut self, what: impl Display, ours: u64, lo: u64, hi: u64) {
        if ours < lo || ours > hi {
            let judge = self.judge;
            self.fail(format!(
                "{what}: ours {ours}, {judge} {lo} before and {hi} after"
            ));
        }
    }

    /// Nothing missing, nothing extra.
    pub fn same_keys<K: Ord + Debug, A, B>(
        &mut self,
        what: &str,
        ours: &BTreeMap<K, A>,
        judged: &BTreeMap<K, B>,
    ) {
        let judge = self.judge;
        for k in ours.keys().filter(|k| !judged.contains_key(k)) {
            self.fail(format!("{what} {k:?}: reported by us, unknown to {judge}"));
        }
        for k in judged.keys().filter(|k| !ours.contains_key(k)) {
            self.fail(format!("{what} {k:?}: seen by {judge}, missing from ours"));
        }
    }

    /// Hands the snapshot's view of each of the test's namespaces (one per
    /// oracle, found by its `netns` label) to `compare`. A namespace
    /// missing, or an error the snapshot reports in one of them, is a
    /// discrepancy; errors elsewhere on the machine are only printed.
    pub fn snapshot_namespaces<O>(
        &mut self,
        doc: &Value,
        oracles: &[O],
        label: impl Fn(&O) -> &str,
        mut compare: impl FnMut(&mut Report, &Value, &O),
    ) {
        for e in doc["errors"].as_array().expect("errors[]") {
            let text = e["error"].as_str().unwrap_or_default();
            if oracles
                .iter()
                .any(|o| text.starts_with(&format!("netns {}:", label(o))))
            {
                self.fail(format!("error in one of the test's namespaces: {e}"));
            } else {
                println!("  (elsewhere on the machine: {e})");
            }
        }
        let namespaces = doc["namespaces"].as_array().expect("namespaces[]");
        for oracle in oracles {
            match namespaces.iter().find(|ns| ns["netns"] == label(oracle)) {
                Some(ns) => compare(self, ns, oracle),
                None => self.fail(format!("netns {} missing from the snapshot", label(oracle))),
            }
        }
    }

    /// The snapshot's sockets under each address (`ours`, JSON objects with
    /// `member` and `inode`) against the judge's (`judged`): no address
    /// missing or extra, as many sockets, `member` labels as the contract
    /// says, and each judged socket found by its inode and handed to
    /// `compare` with ours.
    pub fn pair_by_inode<K: Ord + Debug, S>(
        &mut self,
        at: &str,
        noun: &str,
        ours: &BTreeMap<K, Vec<&Value>>,
        judged: &BTreeMap<K, Vec<S>>,
        inode: impl Fn(&S) -> u64,
        mut compare: impl FnMut(&mut Report, &str, &Value, &S),
    ) {
        let judge = self.judge;
        for (key, mine) in ours.iter().filter(|(k, _)| !judged.contains_key(*k)) {
            self.fail(format!(
                "netns {at} {key:?}: reported by us, unknown to {judge}: {mine:?}"
            ));
        }
        for (key, theirs) in judged {
            let what = format!("netns {at} {key:?}");
            let Some(mine) = ours.get(key) else {
                self.fail(format!("{what}: seen by {judge}, missing from ours"));
                continue;
            };
            self.eq(format!("{what}: {noun}s"), mine.len(), theirs.len());
            let mut members: Vec<Option<u64>> = mine.iter().map(|o| o["member"].as_u64()).collect();
            members.sort();
            self.eq(
                format!("{what}: members"),
                members,
                super::members_wanted(theirs.len()),
            );
            for s in theirs {
                let ino = inode(s);
                let Some(o) = mine.iter().find(|o| o["inode"].as_u64() == Some(ino)) else {
                    self.fail(format!("{what}: no {noun} with inode {ino}"));
                    continue;
                };
                compare(self, &format!("{what} inode {ino}"), o, s);
            }
        }
    }

    /// The daemon's series per (address, member) (`ours`) against the
    /// judge's sockets per address (`judged`): no address missing or extra,
    /// `member` labels as the contract says. `compare` gets each address's
    /// members and the judge's sockets there; members carry no inode on
    /// /metrics, so their figures compare as multisets.
    pub fn pair_members<K: Ord + Debug, V, S>(
        &mut self,
        at: &str,
        ours: &BTreeMap<(K, Option<u64>), V>,
        judged: &BTreeMap<K, Vec<S>>,
        mut compare: impl FnMut(&mut Report, &str, &[(Option<u64>, &V)], &[S]),
    ) {
        let judge = self.judge;
        let keys: BTreeSet<&K> = ours.keys().map(|(k, _)| k).collect();
        for key in keys.iter().filter(|k| !judged.contains_key(**k)) {
            self.fail(format!(
                "netns {at} {key:?}: reported by us, unknown to {judge}"
            ));
        }
        for (key, theirs) in judged {
            let what = format!("netns {at} {key:?}");
            let mine: Vec<(Option<u64>, &V)> = ours
                .iter()
                .filter(|((k, _), _)| k == key)
                .map(|((_, m), v)| (*m, v))
                .collect();
            if mine.is_empty() {
                self.fail(format!("{what}: seen by {judge}, missing from ours"));
                continue;
            }
            let members: Vec<Option<u64>> = mine.iter().map(|(m, _)| *m).collect();
            self.eq(
                format!("{what}: members"),
                members,
                super::members_wanted(theirs.len()),
            );
            compare(self, &what, &mine, theirs);
        }
    }

    pub fn finish(self) {
        assert!(
            self.problems.is_empty(),
            "{}: {} discrepancies with {} (replay with {}):\n  {}",
            self.phase,
            self.problems.len(),
            self.judge,
            self.seed,
            self.problems.join("\n  ")
        );
        println!(
            "{}: every {} agrees with {}",
            self.phase, self.subject, self.judge
        );
    }
}
