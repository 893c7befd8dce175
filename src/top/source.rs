//! Where `top` gets its figures: the daemon's own collectors run in this
//! process over the kernel, or a running daemon's metrics page. Either way
//! the result is the exposition text, parsed into a [`Frame`] by the same
//! code, so both show the same figures.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::exposition;
use super::fetch::{Target, fetch};
use super::fetch_tls::{ClientTls, TlsOptions};
use super::frame::{Frame, QueueKey, SHOWN};
use super::waiting;
use crate::cli::CollectorFlags;
use crate::collect::Collector;
use crate::metrics::Exposition;
use crate::sampler::{Config, Sampler, run_once};
use crate::store::Store;

/// Where figures come from.
pub enum Source {
    /// This process samples the kernel.
    Local(Box<Local>),
    /// A daemon's `/metrics`, over HTTP or HTTPS.
    Remote {
        /// The page.
        target: Target,
        /// TLS settings, for an https URL.
        tls: Option<ClientTls>,
        /// Bound on one fetch.
        timeout: Duration,
    },
}

/// The daemon's collectors in this process.
pub struct Local {
    config: Config,
    collectors: Arc<[Arc<dyn Collector>]>,
    store: Arc<Store>,
    exposition: Exposition,
    /// Sampler threads, for a view that refreshes on its own; without them
    /// (`--once`) the read samples every namespace once first.
    sampler: Option<Sampler>,
}

impl Source {
    /// Sampling here with the daemon's collectors and flags; connection
    /// figures are walked every `interval` (within their CPU budget) and
    /// listeners at least as often. `continuous` starts the sampler
    /// threads.
    pub fn local(flags: &CollectorFlags, interval: Duration, continuous: bool) -> Result<Source> {
        let mut flags = flags.clone();
        flags.driver.connection_interval = interval;
        flags.driver.listener_interval = flags.driver.listener_interval.min(interval);
        let config = flags.sampler_config();
        let collectors: Arc<[Arc<dyn Collector>]> = flags.build(!continuous).into();
        if collectors.is_empty() {
            anyhow::bail!("every collector is disabled: nothing to show");
        }
        let store = Arc::new(Store::new(&flags.health_names(&collectors)));
        let exposition =
            Exposition::new(store.clone(), collectors.clone()).context("registering metrics")?;
        let sampler = if continuous {
            Some(
                Sampler::start(&config, &collectors, store.clone())
                    .context("starting sampler threads")?,
            )
        } else {
            None
        };
        Ok(Source::Local(Box::new(Local {
            config,
            collectors,
            store,
            exposition,
            sampler,
        })))
    }

    /// Reading a daemon's page at `url` (`http://node:19101` means its
    /// `/metrics`); one fetch may take up to `timeout`.
    pub fn remote(url: &str, tls: &TlsOptions, timeout: Duration) -> Result<Source> {
        let target: Target = url.parse().with_context(|| "--from".to_string())?;
        let tls = if target.tls {
            Some(ClientTls::new(tls).map_err(|e| anyhow::anyhow!("--from {target}: {e}"))?)
        } else {
            None
        };
        Ok(Source::Remote {
            target,
            tls,
            timeout,
        })
    }

    /// `local` or the URL (without credentials), for the header.
    pub fn describe(&self) -> String {
        match self {
            Source::Local(_) => "local".to_string(),
            Source::Remote { target, .. } => target.to_string(),
        }
    }

    /// The latest figures; with `detail`, sampling here, also the
    /// connections waiting on that queue.
    pub fn read(&mut self, detail: Option<&QueueKey>) -> Result<Frame, String> {
        let text = match self {
            Source::Local(l) => {
                if l.sampler.is_none() {
                    run_once(&l.config, &l.collectors, &l.store);
                }
                l.exposition
                    .render()
                    .map_err(|e| format!("rendering the figures: {e}"))?
            }
            Source::Remote {
                target,
                tls,
                timeout,
            } => fetch(target, tls.as_ref(), *timeout).map_err(|e| e.to_string())?,
        };
        let samples =
            exposition::parse_only(&text, |name| SHOWN.contains(&name)).map_err(
                |e| match self {
                    Source::Remote { target, .. } => format!("{target}: not a metrics page: {e}"),
                    Source::Local(_) => format!("reading our own figures: {e}"),
                },
            )?;
        let mut frame = Frame::from_samples(&samples);
        if let (Source::Local(l), Some(key)) = (&*self, detail) {
            let targets = l.store.targets();
            let info = targets.targets.list.iter().find(|i| i.name == key.netns);
            let listed = match info {
                Some(info) => waiting::list(info, key, &frame),
                None => Err(format!("netns {} is no longer collected", key.netns)),
            };
            frame.waiting = Some((key.clone(), listed));
        }
        Ok(frame)
    }

    /// Stops sampler threads, if any.
    pub fn stop(self) {
        if let Source::Local(l) = self {
            if let Some(s) = l.sampler {
                s.stop(Duration::from_secs(1));
            }
        }
    }
}
