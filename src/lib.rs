//! sockdiag-exporter: per-listener accept queues (TCP and unix), SYN
//! queues, drops and per-port Send-Q/Recv-Q, read from the kernel over
//! NETLINK_SOCK_DIAG, in every network namespace.
//!
//! Data flows one way: [`diag`] dumps sockets into records; the collectors
//! in [`collect`] fold them ([`aggregate`], [`tracker`]) into immutable
//! [`model`] parts, one per collector and namespace; the [`sampler`] runs
//! them on their tiers in every namespace ([`netns`]) and publishes to the
//! [`store`]; [`metrics`], [`report`] and [`server`] render the store's
//! snapshots.

#![warn(missing_docs)]

pub mod aggregate;
pub mod cgroup;
pub mod cli;
pub mod collect;
pub mod cookie;
pub mod daemon;
pub mod diag;
pub mod family;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod owners;
pub mod procfs;
pub mod report;
pub mod sampler;
pub mod server;
pub mod store;
pub mod table;
pub mod top;
pub mod tracker;
pub mod web;
