//! Metric families: their definitions (name, type, labels, help), and the
//! builder every renderer fills during one scrape.
//!
//! Collectors declare the families they emit as [`MetricDef`] constants;
//! the registry lists them, and the README's metrics table, the HELP lines
//! and the exposition all come from those declarations.

use std::collections::HashMap;

use prometheus::proto::{self, MetricFamily, MetricType};

/// Gauge or counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// May go up and down.
    Gauge,
    /// Only goes up (resets when its socket is replaced).
    Counter,
}

impl Kind {
    /// The name used in the README and `# TYPE` lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// One exported metric family.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// Full metric name.
    pub name: &'static str,
    /// Type.
    pub kind: Kind,
    /// Label names, in exposition order.
    pub labels: &'static [&'static str],
    /// Whether a `member` label is added for sockets that share their
    /// address (`SO_REUSEPORT`): true for figures the kernel keeps per
    /// socket, false for those it can only give per address.
    pub member: bool,
    /// HELP text.
    pub help: &'static str,
}

/// Labels of a per-listener family; unix listeners leave out `port`.
pub const LISTENER_LABELS: &[&str] = &["netns", "family", "address", "port"];
/// Labels of a socket-owner info family: the socket's, then the owner's.
pub const OWNER_LABELS: &[&str] = &[
    "netns",
    "family",
    "address",
    "port",
    "pid",
    "comm",
    "exe",
    "cmdline",
    "unit",
    "container_id",
];
/// Labels of a per-port family.
pub const PORT_LABELS: &[&str] = &["netns", "role", "port"];
/// Labels of a per-namespace family.
pub const NETNS_LABELS: &[&str] = &["netns"];

/// The families of one scrape, filled by every renderer in turn.
pub struct Families {
    families: Vec<MetricFamily>,
    index: HashMap<&'static str, usize>,
}

impl Families {
    /// Empty families for `defs` (a name listed twice is kept once).
    pub fn new<'a>(defs: impl IntoIterator<Item = &'a MetricDef>) -> Self {
        let mut families = Vec::new();
        let mut index = HashMap::new();
        for d in defs {
            if index.contains_key(d.name) {
                continue;
            }
            index.insert(d.name, families.len());
            let mut mf = MetricFamily::default();
            mf.set_name(d.name.to_string());
            mf.set_help(d.help.to_string());
            mf.set_field_type(match d.kind {
                Kind::Gauge => MetricType::GAUGE,
                Kind::Counter => MetricType::COUNTER,
            });
            families.push(mf);
        }
        Families { families, index }
    }

    /// Adds one sample to `def`'s family; a family not declared at
    /// construction is a programming error, dropped rather than served
    /// without HELP and TYPE.
    pub fn push(&mut self, def: &MetricDef, labels: &[(&str, &str)], value: f64) {
        let Some(&i) = self.index.get(def.name) else {
            debug_assert!(false, "family {} was not declared", def.name);
            return;
        };
        let mut m = proto::Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut lp = proto::LabelPair::default();
                    lp.set_name(k.to_string());
                    lp.set_value(v.to_string());
                    lp
                })
                .collect(),
        );
        match def.kind {
            Kind::Gauge => {
                let mut g = proto::Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
            Kind::Counter => {
                let mut c = proto::Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
        }
        self.families[i].mut_metric().push(m);
    }

    /// The filled families.
    pub fn into_inner(self) -> Vec<MetricFamily> {
        self.families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MetricDef = MetricDef {
        name: "a",
        kind: Kind::Counter,
        labels: &["x"],
        member: false,
        help: "A.",
    };

    #[test]
    fn samples_land_in_their_declared_family_once() {
        let mut f = Families::new([&A, &A]);
        f.push(&A, &[("x", "1")], 2.0);
        let fams = f.into_inner();
        assert_eq!(fams.len(), 1, "declared twice, kept once");
        assert_eq!(fams[0].get_metric().len(), 1);
        assert_eq!(fams[0].get_field_type(), MetricType::COUNTER);
    }
}
