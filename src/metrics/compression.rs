//! The permessage-deflate families: messages and bytes before and after
//! compression in each direction, negotiations, refusals. The counts live
//! per reactor thread in [`crate::deflate::stats`]; each read sums them.

use super::families::{Family, HealthAt, Kind, Values};
use crate::deflate::stats::Counts;
use crate::metrics::Report;

fn counts(r: &Report) -> Counts {
    r.metrics.deflate.snapshot()
}

/// Samples labelled `direction` (and `form`): `rows` as (labels, value).
fn labelled(rows: &[(&[(&'static str, &'static str)], u64)]) -> Values {
    Values::Samples(
        rows.iter()
            .map(|(labels, v)| super::Sample {
                labels: labels.iter().map(|(k, v)| (*k, v.to_string())).collect(),
                value: super::Num::U(*v),
            })
            .collect(),
    )
}

pub(super) const COMPRESSION: &[Family] = &[
    Family {
        name: "pollcap_deflate_negotiated_total",
        help: "Connections that negotiated permessage-deflate.",
        kind: Kind::Counter,
        health: HealthAt::Total("compression.negotiated"),
        read: |r| Values::one(counts(r).negotiated),
    },
    Family {
        name: "pollcap_deflate_declined_total",
        help: "Upgrades that offered permessage-deflate and were answered without it.",
        kind: Kind::Counter,
        health: HealthAt::Total("compression.declined"),
        read: |r| Values::one(counts(r).declined),
    },
    Family {
        name: "pollcap_deflate_messages_total",
        help: "Messages compressed (out) and inflated (in).",
        kind: Kind::Counter,
        health: HealthAt::ByLabel("compression.messages", "direction"),
        read: |r| {
            let c = counts(r);
            labelled(&[
                (&[("direction", "out")], c.out_messages),
                (&[("direction", "in")], c.in_messages),
            ])
        },
    },
    Family {
        name: "pollcap_deflate_bytes_total",
        help: "Payload bytes of those messages, uncompressed and compressed (on the wire).",
        kind: Kind::Counter,
        health: HealthAt::Keys(
            "form",
            &[
                ("uncompressed", "compression.bytes_uncompressed"),
                ("compressed", "compression.bytes_compressed"),
            ],
        ),
        read: |r| {
            let c = counts(r);
            labelled(&[
                (
                    &[("direction", "out"), ("form", "uncompressed")],
                    c.out_bytes,
                ),
                (
                    &[("direction", "out"), ("form", "compressed")],
                    c.out_wire_bytes,
                ),
                (&[("direction", "in"), ("form", "uncompressed")], c.in_bytes),
                (
                    &[("direction", "in"), ("form", "compressed")],
                    c.in_wire_bytes,
                ),
            ])
        },
    },
    Family {
        name: "pollcap_deflate_skipped_total",
        help: "Messages sent uncompressed on a deflate connection (under --deflate-threshold).",
        kind: Kind::Counter,
        health: HealthAt::Total("compression.skipped"),
        read: |r| Values::one(counts(r).out_skipped),
    },
    Family {
        name: "pollcap_deflate_shared_total",
        help: "Sends that reused a compression made for another connection.",
        kind: Kind::Counter,
        health: HealthAt::Total("compression.shared"),
        read: |r| Values::one(counts(r).shared_hits),
    },
    Family {
        name: "pollcap_deflate_refused_total",
        help: "Inbound compressed messages refused: too big once inflated (1009), invalid (1007).",
        kind: Kind::Counter,
        health: HealthAt::ByLabel("compression.refused", "reason"),
        read: |r| {
            let c = counts(r);
            labelled(&[
                (&[("reason", "too_big")], c.refused_too_big),
                (&[("reason", "invalid")], c.refused_invalid),
            ])
        },
    },
];
