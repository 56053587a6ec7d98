//! One per-request record as the store and requests.csv keep it: the
//! agent's `RequestRecord` plus the figures derived from it, computed once
//! so both outputs always agree.

use barrage_proto::agent::v1 as pb;

/// A request record with its step, agent and derived figures.
pub struct RequestRow<'a> {
    pub step: u32,
    pub agent: usize,
    pub r: &'a pb::RequestRecord,
    /// Output-bearing chunks: the first one plus one per gap (0 when none
    /// arrived).
    pub chunks: u64,
    /// Over this request's chunk gaps (equal to its per-token ITL when each
    /// chunk carries one token): mean, median and max (`max_stall`).
    pub gap_mean_us: Option<f64>,
    pub gap_p50_us: Option<u64>,
    pub gap_max_us: Option<u64>,
    /// (e2e − ttft) / (output_tokens − 1), for ≥ 2 output tokens.
    pub tpot_us: Option<f64>,
}

impl<'a> RequestRow<'a> {
    pub fn new(step: u32, agent: usize, r: &'a pb::RequestRecord) -> Self {
        let gaps = &r.chunk_gaps_us;
        let first = r.ttft_us.or(r.ttfo_us).is_some() || !gaps.is_empty();
        let gap_p50_us = (!gaps.is_empty()).then(|| {
            let mut sorted = gaps.clone();
            sorted.sort_unstable();
            // The lower median: a value that occurred.
            sorted[(sorted.len() - 1) / 2]
        });
        let tpot_us = match (r.e2e_us, r.ttft_us) {
            (Some(e2e), Some(ttft)) if r.output_tokens >= 2 => {
                Some(e2e.saturating_sub(ttft) as f64 / (r.output_tokens - 1) as f64)
            }
            _ => None,
        };
        Self {
            step,
            agent,
            r,
            chunks: gaps.len() as u64 + u64::from(first),
            gap_mean_us: (!gaps.is_empty())
                .then(|| gaps.iter().map(|g| *g as f64).sum::<f64>() / gaps.len() as f64),
            gap_p50_us,
            gap_max_us: gaps.iter().copied().max(),
            tpot_us,
        }
    }

    pub fn outcome(&self) -> &'static str {
        outcome_name(self.r.outcome)
    }

    pub fn input_source(&self) -> &'static str {
        source_name(self.r.input_source)
    }

    pub fn output_source(&self) -> &'static str {
        source_name(self.r.output_source)
    }
}

pub fn outcome_name(v: i32) -> &'static str {
    match pb::RecordOutcome::try_from(v) {
        Ok(pb::RecordOutcome::Ok) => "ok",
        Ok(pb::RecordOutcome::Failed) => "failed",
        Ok(pb::RecordOutcome::Incomplete) => "incomplete",
        _ => "",
    }
}

pub fn outcome_value(name: &str) -> i32 {
    match name {
        "ok" => pb::RecordOutcome::Ok as i32,
        "failed" => pb::RecordOutcome::Failed as i32,
        "incomplete" => pb::RecordOutcome::Incomplete as i32,
        _ => pb::RecordOutcome::Unspecified as i32,
    }
}

pub fn source_name(v: i32) -> &'static str {
    match pb::CountSource::try_from(v) {
        Ok(pb::CountSource::Server) => "server",
        Ok(pb::CountSource::Tokenizer) => "tokenizer",
        Ok(pb::CountSource::Estimated) => "estimated",
        Ok(pb::CountSource::TokenizerChatTemplate) => "tokenizer_chat_template",
        _ => "",
    }
}

pub fn source_value(name: &str) -> i32 {
    match name {
        "server" => pb::CountSource::Server as i32,
        "tokenizer" => pb::CountSource::Tokenizer as i32,
        "estimated" => pb::CountSource::Estimated as i32,
        "tokenizer_chat_template" => pb::CountSource::TokenizerChatTemplate as i32,
        _ => pb::CountSource::Unspecified as i32,
    }
}

/// Chunk gaps as little-endian u32 µs (4 bytes a gap; a gap over ~71 min
/// saturates). Empty gaps are stored as NULL, not as an empty blob.
pub fn gaps_blob(gaps: &[u64]) -> Option<Vec<u8>> {
    (!gaps.is_empty()).then(|| {
        gaps.iter()
            .flat_map(|g| u32::try_from(*g).unwrap_or(u32::MAX).to_le_bytes())
            .collect()
    })
}

pub fn gaps_from_blob(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(4)
        .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_figures_of_a_streamed_request() {
        let r = pb::RequestRecord {
            ttft_us: Some(50_000),
            e2e_us: Some(80_000),
            output_tokens: 4,
            chunk_gaps_us: vec![10_000, 5_000, 15_000],
            ..pb::RequestRecord::default()
        };
        let row = RequestRow::new(0, 0, &r);
        assert_eq!(row.chunks, 4);
        assert_eq!(row.gap_mean_us, Some(10_000.0));
        assert_eq!(row.gap_p50_us, Some(10_000));
        assert_eq!(row.gap_max_us, Some(15_000));
        assert_eq!(row.tpot_us, Some(10_000.0));
        let blob = gaps_blob(&r.chunk_gaps_us).expect("gaps");
        assert_eq!(gaps_from_blob(&blob), r.chunk_gaps_us);
    }
}
