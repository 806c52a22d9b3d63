//! What a job file says about the model and the data, in the ML crate's terms: shared by the
//! federated roles and the confidential trainer's trusted core (which must not link the
//! network crate).

use std::path::Path;

use confide_core::{DataFormat, JobSpec};

use crate::{CsvSpec, DataError, Dataset, ModelSpec, Standardizer};

/// The model a job trains.
pub fn model_spec(spec: &JobSpec) -> ModelSpec {
    ModelSpec {
        kind: spec.model.kind,
        input_dim: spec.input_dim(),
        hidden: spec.model.hidden.clone(),
        classes: spec.model.classes,
        input_shape: spec.model.input.clone(),
        layers: spec.model.layers.clone(),
    }
}

/// The parameters a job starts from: its `[model] init` weights, checked against their
/// SHA-256 and against the architecture, or else the seeded initialisation.
///
/// # Errors
/// Weights that were not read, do not match their digest, or do not fit the layers.
pub fn initial_params(spec: &JobSpec, seed: u64) -> Result<Vec<f32>, String> {
    let model = model_spec(spec);
    match &spec.model.init {
        None => Ok(model.initial_vector(seed)),
        Some(init) => {
            let bytes = init.bytes()?;
            crate::export::from_safetensors(&model, &bytes)
                .map_err(|e| format!("model.init: the weights do not fit the layers: {e}"))
        }
    }
}

/// Loads an owner's data file as the job describes it: a CSV with its label column and
/// exclusions, checked against the job's schema, or a safetensors array file
/// ([`crate::arrays`]), each with the job's fixed standardisation applied; or text cut into
/// windows ([`crate::text`]).
pub fn load_job_data(spec: &JobSpec, path: &Path) -> Result<Dataset, DataError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| DataError::Io {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    read_job_data(spec, file, &shown)
}

/// As [`load_job_data`], from any reader (`shown` names it in errors).
pub fn read_job_data(
    spec: &JobSpec,
    reader: impl std::io::Read,
    shown: &str,
) -> Result<Dataset, DataError> {
    let label = match (spec.data.format, &spec.data.label) {
        (DataFormat::Text, _) => {
            let text = spec.data.text.clone().unwrap_or_default();
            return crate::text::read_text(reader, shown, spec.data.feature_count, &text);
        }
        (DataFormat::Safetensors, _) => {
            let mut bytes = Vec::new();
            let mut reader = reader;
            std::io::Read::read_to_end(&mut reader, &mut bytes).map_err(|e| DataError::Io {
                path: shown.to_string(),
                message: e.to_string(),
            })?;
            let mut data = crate::arrays::read_arrays(
                &bytes,
                shown,
                spec.data.feature_count,
                spec.model.classes,
            )?
            .data;
            standardize(spec, &mut data);
            return Ok(data);
        }
        (DataFormat::Csv, Some(label)) => label.clone(),
        (DataFormat::Csv, None) => {
            return Err(DataError::Schema {
                path: shown.to_string(),
                message: "the job names no label column".into(),
                public: "the job names no label column".into(),
            });
        }
    };
    let csv = CsvSpec {
        has_header: spec.data.has_header,
        label,
        exclude: spec.data.exclude.clone(),
    };
    let mut data = crate::dataset::read_csv(reader, shown, &csv, spec.model.classes)?;
    data.check_schema(shown, spec.data.feature_count, &spec.data.features)?;
    standardize(spec, &mut data);
    Ok(data)
}

/// The job's fixed standardisation, if any.
fn standardize(spec: &JobSpec, data: &mut Dataset) {
    if let Some(s) = Standardizer::of_job(&spec.data.standardize) {
        s.apply(data);
    }
}
