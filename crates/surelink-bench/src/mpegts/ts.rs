//! MPEG-TS continuity checking (ISO/IEC 13818-1 §2.4.3.3, the check ETSI
//! TR 101 290 calls `Continuity_count_error`), written for the `mpegts`
//! workload: feed it the datagrams the receiving application got, in the
//! order it got them, and it counts the places where a PID's 4-bit
//! continuity counter jumped, i.e. where TS packets went missing.
//!
//! Pure and deterministic: [`ContinuityChecker::feed`] takes bytes, nothing
//! else. The rules:
//!
//! * Packets are 188 bytes and start with the sync byte `0x47`; a datagram
//!   carries whole packets (1316 bytes = 7). Anything else in a datagram is
//!   counted in [`ContinuityReport::bad_packets`] and skipped.
//! * The counter of a PID goes up by one (mod 16) on every packet that
//!   carries a payload (`adaptation_field_control` `01` or `11`). Packets
//!   without a payload (`10`, adaptation field only, and the reserved `00`)
//!   do not advance it and are not checked.
//! * The null PID `0x1FFF` is not checked.
//! * A packet may be repeated once (the same counter twice in a row); a
//!   third copy is an error.
//! * A packet whose adaptation field sets `discontinuity_indicator` may
//!   carry any counter; the PID's count restarts there.
//! * The first packet of a PID starts its count. After an error the count
//!   continues from the counter that was seen, so one gap is one error.

use std::collections::hash_map::{Entry, HashMap};

use serde::Serialize;

/// Size of a TS packet.
pub const PACKET: usize = 188;
/// The sync byte every TS packet starts with.
const SYNC: u8 = 0x47;
/// The null (stuffing) PID, not checked.
const NULL_PID: u16 = 0x1FFF;

/// What a [`ContinuityChecker`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ContinuityReport {
    /// Well-formed TS packets seen (all PIDs, null PID included).
    pub packets: u64,
    /// Continuity-counter errors over all checked PIDs.
    pub errors: u64,
    /// 188-byte pieces without the sync byte, and datagram tails shorter
    /// than a packet.
    pub bad_packets: u64,
}

/// The continuity state of one PID.
#[derive(Debug, Clone, Copy)]
struct PidState {
    /// The last counter seen on a packet with payload.
    counter: u8,
    /// Whether that counter has already been repeated once.
    repeated: bool,
}

/// Counts continuity-counter errors per PID over a stream of datagrams.
#[derive(Debug, Default)]
pub struct ContinuityChecker {
    pids: HashMap<u16, PidState>,
    report: ContinuityReport,
}

impl ContinuityChecker {
    /// A checker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks every TS packet in one datagram, in order.
    pub fn feed(&mut self, datagram: &[u8]) {
        let mut packets = datagram.chunks_exact(PACKET);
        for packet in &mut packets {
            self.packet(packet);
        }
        if !packets.remainder().is_empty() {
            self.report.bad_packets += 1;
        }
    }

    /// What was found so far.
    pub fn report(&self) -> ContinuityReport {
        self.report
    }

    fn packet(&mut self, p: &[u8]) {
        if p[0] != SYNC {
            self.report.bad_packets += 1;
            return;
        }
        self.report.packets += 1;
        let pid = u16::from_be_bytes([p[1] & 0x1F, p[2]]);
        let adaptation_control = (p[3] >> 4) & 0b11;
        let counter = p[3] & 0x0F;
        let has_payload = adaptation_control & 0b01 != 0;
        let has_adaptation = adaptation_control & 0b10 != 0;
        if pid == NULL_PID || !has_payload {
            return;
        }
        // adaptation_field_length, then the flags byte whose top bit is
        // discontinuity_indicator (present only if the length is not 0).
        let discontinuity = has_adaptation && p[4] > 0 && p[5] & 0x80 != 0;
        let fresh = PidState {
            counter,
            repeated: false,
        };
        let state = match self.pids.entry(pid) {
            Entry::Vacant(first) => {
                first.insert(fresh);
                return;
            }
            Entry::Occupied(known) => known.into_mut(),
        };
        if discontinuity {
            *state = fresh;
            return;
        }
        if counter == state.counter {
            if state.repeated {
                self.report.errors += 1;
            }
            state.repeated = true;
        } else {
            if counter != (state.counter + 1) & 0x0F {
                self.report.errors += 1;
            }
            *state = fresh;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TS packet of `pid` with `counter`; `payload` and `adaptation`
    /// select `adaptation_field_control`, `discontinuity` sets the
    /// indicator in the adaptation field.
    fn packet(
        pid: u16,
        counter: u8,
        payload: bool,
        adaptation: bool,
        discontinuity: bool,
    ) -> Vec<u8> {
        let mut p = vec![0xFFu8; PACKET];
        p[0] = SYNC;
        p[1] = (pid >> 8) as u8 & 0x1F;
        p[2] = pid as u8;
        let control = u8::from(adaptation) << 1 | u8::from(payload);
        p[3] = control << 4 | (counter & 0x0F);
        if adaptation {
            p[4] = 1;
            p[5] = if discontinuity { 0x80 } else { 0 };
        }
        p
    }

    fn data(pid: u16, counter: u8) -> Vec<u8> {
        packet(pid, counter, true, false, false)
    }

    fn check(packets: &[Vec<u8>]) -> ContinuityReport {
        let mut checker = ContinuityChecker::new();
        // Seven packets per datagram, as ffmpeg's pkt_size=1316 sends them.
        for datagram in packets.chunks(7) {
            checker.feed(&datagram.concat());
        }
        checker.report()
    }

    #[test]
    fn counters_that_go_up_by_one_and_wrap_are_clean() {
        let packets: Vec<_> = (0..40u8).map(|i| data(0x100, i % 16)).collect();
        let report = check(&packets);
        assert_eq!(report.packets, 40);
        assert_eq!(report.errors, 0);
        assert_eq!(report.bad_packets, 0);
    }

    #[test]
    fn a_gap_is_one_error_and_counting_resumes_after_it() {
        let packets: Vec<_> = [0u8, 1, 2, 5, 6, 7, 15, 0, 1]
            .iter()
            .map(|&c| data(0x100, c))
            .collect();
        assert_eq!(check(&packets).errors, 2);
    }

    #[test]
    fn a_lost_datagram_is_counted_per_pid() {
        let mut packets = Vec::new();
        for i in 0..21u8 {
            packets.push(data(0x100 + u16::from(i % 3), i / 3));
        }
        let mut checker = ContinuityChecker::new();
        for (n, datagram) in packets.chunks(7).enumerate() {
            if n != 1 {
                checker.feed(&datagram.concat());
            }
        }
        // The middle datagram held packets of all three PIDs.
        assert_eq!(checker.report().errors, 3);
        assert_eq!(checker.report().packets, 14);
    }

    #[test]
    fn one_duplicate_is_allowed_a_second_is_an_error() {
        let once: Vec<_> = [3u8, 4, 4, 5].iter().map(|&c| data(0x31, c)).collect();
        assert_eq!(check(&once).errors, 0);
        let twice: Vec<_> = [3u8, 4, 4, 4, 5].iter().map(|&c| data(0x31, c)).collect();
        assert_eq!(check(&twice).errors, 1);
        let two_pairs: Vec<_> = [3u8, 3, 4, 4].iter().map(|&c| data(0x31, c)).collect();
        assert_eq!(check(&two_pairs).errors, 0);
    }

    #[test]
    fn the_discontinuity_indicator_restarts_the_count() {
        let packets = vec![
            data(0x44, 1),
            data(0x44, 2),
            packet(0x44, 9, true, true, true),
            data(0x44, 10),
        ];
        assert_eq!(check(&packets).errors, 0);
        let without = vec![
            data(0x44, 1),
            data(0x44, 2),
            packet(0x44, 9, true, true, false),
            data(0x44, 10),
        ];
        assert_eq!(check(&without).errors, 1);
    }

    #[test]
    fn packets_without_payload_and_the_null_pid_are_not_checked() {
        let packets = vec![
            data(0x100, 7),
            // adaptation field only: the counter does not advance
            packet(0x100, 7, false, true, false),
            packet(0x100, 2, false, true, false),
            data(0x100, 8),
            data(NULL_PID, 0),
            data(NULL_PID, 9),
            data(0x100, 9),
        ];
        let report = check(&packets);
        assert_eq!(report.errors, 0);
        assert_eq!(report.packets, 7);
    }

    #[test]
    fn bytes_that_are_not_ts_packets_are_counted_not_trusted() {
        let mut checker = ContinuityChecker::new();
        checker.feed(b"surelink-bench probe");
        let mut broken = data(0x100, 0);
        broken[0] = 0;
        checker.feed(&broken);
        checker.feed(&[data(0x100, 0), vec![SYNC; 10]].concat());
        let report = checker.report();
        assert_eq!(report.bad_packets, 3);
        assert_eq!(report.packets, 1);
        assert_eq!(report.errors, 0);
    }
}
