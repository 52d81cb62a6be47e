//! Scratch: streaming-read rates of the kernels (removed after tuning).
#![allow(missing_docs)]
use gatewarden::clock::{Clock, SystemClock};
use gatewarden::index::Kernels;
use gatewarden::index::kernels::{F32Block, I8Block};

fn best(mut f: impl FnMut()) -> f64 {
    let c = SystemClock;
    f();
    (0..7)
        .map(|_| {
            let t = c.instant();
            f();
            c.instant().duration_since(t).as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let k = Kernels::detect();
    let n = 100_000;
    let d = 512;
    let rows: Vec<f32> = (0..n * d).map(|i| (i % 7) as f32 * 0.01).collect();
    let q: Vec<f32> = (0..d).map(|i| i as f32 * 0.001).collect();
    let bytes = (n * d * 4) as f64;
    let half = n * d / 2;
    let t = best(|| {
        std::hint::black_box(k.dot_f32(&rows[..half], &rows[half..]));
    });
    println!("dot_f32 over 2 x 100MB: {:.1} GB/s", bytes / t / 1e9);
    let mut out = vec![0f32; 256];
    let t = best(|| {
        for s in (0..n).step_by(256) {
            let b = F32Block::new(&q, &rows[s * d..], d, 256.min(n - s)).unwrap();
            k.score_f32(&b, &mut out);
            std::hint::black_box(&out);
        }
    });
    println!(
        "score_f32 blocks of 256: {:.1} GB/s ({:.2} ms)",
        bytes / t / 1e9,
        t * 1e3
    );
    let mut out = vec![0f32; n];
    let t = best(|| {
        let b = F32Block::new(&q, &rows, d, n).unwrap();
        k.score_f32(&b, &mut out);
        std::hint::black_box(&out);
    });
    println!(
        "score_f32 one call: {:.1} GB/s ({:.2} ms)",
        bytes / t / 1e9,
        t * 1e3
    );
    for huge in [false, true] {
        let mut m = memmap2::MmapOptions::new()
            .len(n * d * 4)
            .map_anon()
            .unwrap();
        if huge {
            m.advise(memmap2::Advice::HugePage).unwrap();
        }
        m.copy_from_slice(bytemuck::cast_slice(&rows));
        let r: &[f32] = bytemuck::cast_slice(&m[..]);
        let mut out = vec![0f32; 256];
        let t = best(|| {
            for s in (0..n).step_by(256) {
                let b = F32Block::new(&q, &r[s * d..], d, 256.min(n - s)).unwrap();
                k.score_f32(&b, &mut out);
                std::hint::black_box(&out);
            }
        });
        println!(
            "anon huge={huge}: score_f32 blocks of 256: {:.1} GB/s ({:.2} ms)",
            bytes / t / 1e9,
            t * 1e3
        );
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        println!(
            "{}",
            meminfo
                .lines()
                .filter(|l| l.contains("AnonHuge"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    {
        let g = gatewarden::gallery::Gallery::open_with(
            std::path::Path::new("/tmp/cli/g100k.gwg"),
            true,
        )
        .unwrap();
        let r = g.vectors();
        let mut out = vec![0f32; 256];
        let t = best(|| {
            for s in (0..n).step_by(256) {
                let b = F32Block::new(&q, &r[s * d..], d, 256.min(n - s)).unwrap();
                k.score_f32(&b, &mut out);
                std::hint::black_box(&out);
            }
        });
        println!(
            "file map: score_f32 blocks of 256: {:.1} GB/s ({:.2} ms) at {:p}",
            bytes / t / 1e9,
            t * 1e3,
            r.as_ptr()
        );
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        println!(
            "{}",
            meminfo
                .lines()
                .filter(|l| l.contains("FilePmd") || l.contains("FileHuge"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let codes: Vec<i8> = (0..n * d).map(|i| (i % 200) as i8 - 100).collect();
    let qc: Vec<i8> = (0..d).map(|i| (i % 100) as i8).collect();
    let mut iout = vec![0i32; n];
    let t = best(|| {
        let b = I8Block::new(&qc, &codes, d, n).unwrap();
        k.score_i8(&b, &mut iout);
        std::hint::black_box(&iout);
    });
    println!(
        "score_i8 one call: {:.1} GB/s ({:.2} ms)",
        (n * d) as f64 / t / 1e9,
        t * 1e3
    );
}
