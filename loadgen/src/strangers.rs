//! Faces of people who were never enrolled, made exactly as a run's strangers are: the ground
//! truth for checking the calibration's FPIR estimate (`gatewarden calibrate --strangers`).
//!
//! A run's stranger at event `index` depends only on the population's seed, the run's seed,
//! the dimension and `index`, so the file holds the faces that `gatewarden-loadgen run --seed
//! S` would show at events `0..count` as impostors.

use std::path::Path;

use gatewarden::npy::{F32MatrixWriter, NpyError};
use gatewarden::testing::{IndexedFaces, mix64};

use crate::population::PopulationConfig;
use crate::stream::Stream;

/// The face of the stranger a run seeded `run_seed` shows at event `index`.
pub fn stranger_face(pop: &PopulationConfig, run_seed: u64, index: u64) -> Vec<f32> {
    // Strangers differ from run to run, and never share a face with the population.
    let strangers = IndexedFaces::new(mix64(run_seed ^ pop.seed), pop.dim);
    strangers.impostor_probe(index, &mut Stream::Probe.rng(run_seed, index))
}

/// Writes the faces of the strangers at events `0..count` of a run seeded `run_seed` to `out`
/// (.npy, float32, one row each).
///
/// # Errors
/// The file cannot be written.
pub fn write_strangers(
    pop: &PopulationConfig,
    run_seed: u64,
    count: usize,
    out: &Path,
) -> Result<(), NpyError> {
    const BLOCK: u64 = 1024;
    let mut w = F32MatrixWriter::create(out, count, pop.dim)?;
    let mut rows = Vec::with_capacity(BLOCK as usize * pop.dim);
    for start in (0..count as u64).step_by(BLOCK as usize) {
        rows.clear();
        for index in start..(start + BLOCK).min(count as u64) {
            rows.extend(stranger_face(pop, run_seed, index));
        }
        w.write_rows(&rows)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_holds_the_runs_strangers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let pop = PopulationConfig {
            dim: 16,
            seed: 9,
            ..PopulationConfig::default()
        };
        let path = dir.path().join("strangers.npy");
        write_strangers(&pop, 5, 1500, &path).unwrap();
        let m = gatewarden::npy::read_f32_matrix(&path).unwrap();
        assert_eq!((m.rows, m.dim), (1500, 16));
        for i in [0usize, 1, 1023, 1024, 1499] {
            assert_eq!(
                m.row(i),
                stranger_face(&pop, 5, i as u64).as_slice(),
                "row {i}"
            );
        }
        // Another run seed, other strangers.
        assert_ne!(stranger_face(&pop, 6, 0), stranger_face(&pop, 5, 0));
    }
}
