//! Unit tests for `summary`: known samples in, known aggregates out.

use barrage_proto::exporter::v1::HostSample;

use super::*;

const S: u64 = 1_000_000_000;

fn sample(seq: u64, t_ns: u64, util: u32, power_w: u32, energy_j: Option<u64>) -> Sample {
    Sample {
        seq,
        exporter_mono_ns: t_ns,
        gpus: vec![GpuSample {
            index: 0,
            uuid: "GPU-a".into(),
            utilization_gpu_pct: Some(util),
            memory_used_bytes: Some(u64::from(util)),
            memory_total_bytes: Some(100),
            power_mw: Some(power_w * 1000),
            energy_total_mj: energy_j.map(|j| j * 1000),
            throttle_reasons: Some(if util == 90 { 0x4 } else { 0x1 }),
            ..Default::default()
        }],
        host: Some(HostSample {
            cpu_percent: util as f32 / 10.0,
            memory_used_bytes: 25,
            memory_total_bytes: 100,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn three(energy: [Option<u64>; 3]) -> Vec<Sample> {
    vec![
        sample(1, 0, 10, 100, energy[0]),
        sample(2, S, 50, 200, energy[1]),
        sample(3, 2 * S, 90, 300, energy[2]),
    ]
}

#[test]
fn averages_maxima_p95_and_counter_energy() {
    let sum = summarize(&three([Some(1000), Some(1150), Some(1400)]), Window::ALL);
    assert_eq!(sum.samples, 3);
    assert_eq!(sum.span_s, 2.0);
    let g = &sum.gpus[0];
    let util = g.utilization_gpu_pct.expect("util");
    assert_eq!(
        (util.avg, util.max, util.p95, util.samples),
        (50.0, 90.0, 90.0, 3)
    );
    assert_eq!(g.memory_used_pct.expect("mem").avg, 50.0);
    assert_eq!(g.power_w.expect("power").avg, 200.0);
    assert_eq!(g.energy_j, Some(400.0));
    assert_eq!(g.energy_source, Some(EnergySource::Counter));
    assert!((g.power_thermal_throttled_pct.expect("throttle") - 100.0 / 3.0).abs() < 1e-9);
    assert_eq!(g.utilization_memory_pct, None, "unsupported stays unset");
    let h = sum.host.expect("host");
    assert_eq!((h.cpu_percent.avg, h.cpu_percent.max), (5.0, 9.0));
    assert_eq!(h.memory_used_pct.expect("mem").max, 25.0);
}

#[test]
fn without_a_usable_counter_energy_is_the_power_integral() {
    for energy in [[None, None, None], [Some(5000), Some(10), Some(20)]] {
        let g = &summarize(&three(energy), Window::ALL).gpus[0];
        // (100+200)/2 W × 1 s + (200+300)/2 W × 1 s
        assert_eq!(g.energy_j, Some(400.0));
        assert_eq!(g.energy_source, Some(EnergySource::PowerIntegral));
    }
}

#[test]
fn window_and_gaps() {
    let mut samples = three([None, None, None]);
    samples[2].seq = 6;
    let sum = summarize(
        &samples,
        Window {
            start_ns: S,
            end_ns: 2 * S,
        },
    );
    assert_eq!(sum.samples, 2);
    assert_eq!(sum.missed_samples, 3);
    assert_eq!(sum.gpus[0].utilization_gpu_pct.expect("util").avg, 70.0);
    let empty = summarize(
        &samples,
        Window {
            start_ns: 3 * S,
            end_ns: 4 * S,
        },
    );
    assert_eq!((empty.samples, empty.gpus.len()), (0, 0));
    assert!(empty.host.is_none());
}

#[test]
fn window_from_local_clock_and_p95_rank() {
    let offset = ClockOffset {
        offset_ns: 500,
        rtt_ns: 10,
    };
    assert_eq!(
        Window::from_local(&offset, 100, 200),
        Window {
            start_ns: 600,
            end_ns: 700
        }
    );
    let p95 = |n: u32| {
        Stat::from_values((1..=n).map(f64::from).collect())
            .expect("values")
            .p95
    };
    assert_eq!(p95(100), 95.0);
    assert_eq!(p95(20), 19.0);
    assert_eq!(p95(1), 1.0);
    assert!(Stat::from_values(Vec::new()).is_none());
}
