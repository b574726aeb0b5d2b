//! Rows of figures and their medians, shared by every workload: a [`Row`]
//! holds one system's runs of one workload and, once [`Row::finish`]ed, the
//! field-by-field median over them ([`Median`]).
//!
//! The workloads fill rows; [`crate::report`] turns them into tables.

use std::fmt::Write as _;

use serde::Serialize;

use crate::system::System;
use crate::transport::Diagnostics;
use crate::workload::{BulkRun, RtRun, SmallRun};

/// Whether a row has figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Measured (at least one run succeeded).
    Ok,
    /// The system is missing on this machine (see `note`).
    NotAvailable,
    /// The system cannot take part in this workload (see `note`).
    NotApplicable,
    /// Every run failed (see `errors`).
    Failed,
}

impl Status {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::NotAvailable => "not available",
            Status::NotApplicable => "not applicable",
            Status::Failed => "failed",
        }
    }
}

/// One system in one workload: every run and the median over them.
#[derive(Debug, Clone, Serialize)]
pub struct Row<T> {
    /// The system's name.
    pub system: System,
    /// Whether there are figures.
    pub status: Status,
    /// Why not, when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Successful runs.
    pub runs: Vec<T>,
    /// Errors of failed runs.
    pub errors: Vec<String>,
    /// Field-by-field medians over `runs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median: Option<T>,
}

impl<T> Row<T> {
    /// A row for a system that is measured.
    pub fn new(system: System) -> Self {
        Self {
            system,
            status: Status::Ok,
            note: None,
            runs: Vec::new(),
            errors: Vec::new(),
            median: None,
        }
    }

    /// A row without figures.
    pub fn without(system: System, status: Status, note: impl Into<String>) -> Self {
        Self {
            note: Some(note.into()),
            status,
            ..Self::new(system)
        }
    }
}

/// Median of some values (NaN-free values only; NaN if none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

pub(crate) fn med<T>(runs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(runs.iter().map(f).collect())
}

pub(crate) fn med_u64<T>(runs: &[T], f: impl Fn(&T) -> u64) -> u64 {
    med(runs, |r| f(r) as f64).round() as u64
}

/// Key-by-key medians of the runs' sender counters (`None` if no run has any).
pub(crate) fn median_diagnostics<'a>(
    runs: impl Iterator<Item = Option<&'a Diagnostics>>,
) -> Option<Diagnostics> {
    let runs: Vec<&Diagnostics> = runs.flatten().collect();
    let first = runs.first()?;
    Some(
        first
            .keys()
            .map(|&k| {
                (
                    k,
                    median(runs.iter().filter_map(|d| d.get(k).copied()).collect()),
                )
            })
            .collect(),
    )
}

/// Something that has a field-by-field median.
pub trait Median: Sized {
    /// The median of `runs` (not empty).
    fn median(runs: &[Self]) -> Self;
}

impl Median for BulkRun {
    fn median(runs: &[Self]) -> Self {
        BulkRun {
            bytes: med_u64(runs, |r| r.bytes),
            received: med_u64(runs, |r| r.received),
            secs: med(runs, |r| r.secs),
            mib_per_s: med(runs, |r| r.mib_per_s),
            cpu_s: med(runs, |r| r.cpu_s),
            cpu_s_per_mib: med(runs, |r| r.cpu_s_per_mib),
            delivered_fraction: med(runs, |r| r.delivered_fraction),
            sender: median_diagnostics(runs.iter().map(|r| r.sender.as_ref())),
        }
    }
}

impl Median for SmallRun {
    fn median(runs: &[Self]) -> Self {
        SmallRun {
            size: runs[0].size,
            messages: med_u64(runs, |r| r.messages),
            secs: med(runs, |r| r.secs),
            msgs_per_s: med(runs, |r| r.msgs_per_s),
            sender: median_diagnostics(runs.iter().map(|r| r.sender.as_ref())),
        }
    }
}

impl Median for RtRun {
    fn median(runs: &[Self]) -> Self {
        RtRun {
            sent: med_u64(runs, |r| r.sent),
            delivered: med_u64(runs, |r| r.delivered),
            lost: med_u64(runs, |r| r.lost),
            duplicated: med_u64(runs, |r| r.duplicated),
            p50_ms: med(runs, |r| r.p50_ms),
            p99_ms: med(runs, |r| r.p99_ms),
            p999_ms: med(runs, |r| r.p999_ms),
            max_ms: med(runs, |r| r.max_ms),
            wire_bytes: med_u64(runs, |r| r.wire_bytes),
            payload_bytes: med_u64(runs, |r| r.payload_bytes),
            wire_per_payload: med(runs, |r| r.wire_per_payload),
            sender: median_diagnostics(runs.iter().map(|r| r.sender.as_ref())),
            receiver: median_diagnostics(runs.iter().map(|r| r.receiver.as_ref())),
            histogram: None,
        }
    }
}

impl<T: Median> Row<T> {
    /// Fills `median` and the status from the runs.
    pub fn finish(&mut self) {
        if self.status != Status::Ok {
            return;
        }
        if self.runs.is_empty() {
            self.status = Status::Failed;
        } else {
            self.median = Some(T::median(&self.runs));
        }
    }
}

/// Why a row has no figures: its status, and its note or first error.
pub(crate) fn why<T>(row: &Row<T>) -> String {
    let mut text = row.status.label().to_owned();
    if let Some(note) = &row.note {
        let _ = write!(text, ": {note}");
    } else if let Some(e) = row.errors.first() {
        let _ = write!(text, ": {e}");
    }
    text
}
