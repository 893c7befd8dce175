//! sockdiag-exporter: per-listener accept queues, SYN queues, drops and
//! per-port Send-Q/Recv-Q, read from the kernel over NETLINK_SOCK_DIAG.
//!
//! Data flows one way: [`diag`] dumps sockets into records, [`aggregate`] folds
//! them into per-listener and per-port figures while they stream, [`sampler`]
//! runs the sampling tiers and publishes immutable [`snapshot`]s, and
//! [`metrics`], [`report`] and [`server`] render those.

#![warn(missing_docs)]

pub mod aggregate;
pub mod cgroup;
pub mod cli;
pub mod daemon;
pub mod diag;
pub mod listeners;
pub mod metrics;
pub mod netns;
pub mod owners;
pub mod procfs;
pub mod report;
pub mod sampler;
pub mod server;
pub mod snapshot;
