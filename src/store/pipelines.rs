//! Pipelines over a [`KeyValue`] store: the description, written once, and a failure that
//! no step's task records (a refused step). Progress itself is read from the steps' tasks.

use super::index::Index;
use super::layout::{TaskKey, pipeline_failure_key, pipeline_key, pipeline_notified_key};
use super::tasks::TaskStore;
use super::{KeyValue, StoreError, get_json, to_json};
use crate::pipeline::progress::{PipelineFailure, PipelineView, step_external_id, view};
use crate::pipeline::spec::PipelineSpec;
use crate::task::TaskStatus;

pub struct PipelineStore<'a> {
    kv: &'a dyn KeyValue,
}

impl<'a> PipelineStore<'a> {
    pub fn new(kv: &'a dyn KeyValue) -> Self {
        Self { kv }
    }

    pub fn spec(&self, id: &str) -> Result<Option<PipelineSpec>, StoreError> {
        get_json(self.kv, &pipeline_key(id))
    }

    pub fn save_spec(&self, spec: &PipelineSpec) -> Result<(), StoreError> {
        self.kv.set(&pipeline_key(&spec.id), &to_json(spec))
    }

    /// Lists a pipeline in the index of unfinished pipelines (one `set`).
    pub fn index(&self, spec: &PipelineSpec) -> Result<(), StoreError> {
        Index::pipelines(self.kv).add(&pipeline_entry(&spec.id, &spec.generation))
    }

    /// Forgets a pipeline whose first step Kling refused, so creating it again starts
    /// afresh: its description, if it is still this creation's (a concurrent creation
    /// of the same id may have replaced it; one whose write lands between the read and
    /// the delete still loses it), then its own index entry.
    pub fn forget(&self, spec: &PipelineSpec) -> Result<(), StoreError> {
        if self
            .spec(&spec.id)?
            .is_some_and(|stored| stored.generation == spec.generation)
        {
            self.kv.delete(&pipeline_key(&spec.id))?;
        }
        Index::pipelines(self.kv).remove(&pipeline_entry(&spec.id, &spec.generation))
    }

    /// Deletes a pipeline: what it keeps beside its description first, the description
    /// (what makes it exist) last.
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.delete_marks(id)?;
        self.kv.delete(&pipeline_key(id))
    }

    /// The failure and notified mark only: a create clears what an earlier pipeline of
    /// the id may have left (an advance or a send that read the description just before
    /// it went may write one after), so the new pipeline does not inherit it.
    pub fn delete_marks(&self, id: &str) -> Result<(), StoreError> {
        self.kv.delete(&pipeline_failure_key(id))?;
        self.kv.delete(&pipeline_notified_key(id))
    }

    /// The `webhook-id` of the pipeline's last notification a receiver took.
    pub fn notified(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .kv
            .get(&pipeline_notified_key(id))?
            .and_then(|bytes| String::from_utf8(bytes).ok()))
    }

    pub fn mark_notified(&self, id: &str, webhook_id: &str) -> Result<(), StoreError> {
        self.kv
            .set(&pipeline_notified_key(id), webhook_id.as_bytes())
    }

    pub fn fail(&self, id: &str, failure: &PipelineFailure) -> Result<(), StoreError> {
        self.kv.set(&pipeline_failure_key(id), &to_json(failure))
    }

    /// The pipeline and its steps' tasks, read in order up to the first step that has not
    /// succeeded (the steps after it cannot have started).
    pub fn view(&self, id: &str) -> Result<Option<PipelineView>, StoreError> {
        let Some(spec) = self.spec(id)? else {
            return Ok(None);
        };
        Ok(Some(self.view_of(&spec)?))
    }

    pub fn view_of(&self, spec: &PipelineSpec) -> Result<PipelineView, StoreError> {
        let failure: Option<PipelineFailure> = get_json(self.kv, &pipeline_failure_key(&spec.id))?;
        let tasks = TaskStore::new(self.kv);
        let mut found = Vec::with_capacity(spec.steps.len());
        for step in 0..spec.steps.len() {
            let key = TaskKey::external(&step_external_id(&spec.id, step));
            let task = tasks.find_by_key(&key)?;
            let succeeded = task
                .as_ref()
                .is_some_and(|t| t.status == TaskStatus::Succeed);
            found.push(task);
            if !succeeded {
                break;
            }
        }
        Ok(view(spec, &found, failure))
    }
}

/// A pipeline's entry in the index of unfinished pipelines: `{id}/{generation}`.
pub fn pipeline_entry(id: &str, generation: &str) -> String {
    format!("{id}/{generation}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryKv;

    fn spec(generation: &str) -> PipelineSpec {
        PipelineSpec {
            id: "p".into(),
            steps: Vec::new(),
            created_at: 1,
            generation: generation.into(),
            steps_digest: None,
        }
    }

    #[test]
    fn forgetting_one_creation_leaves_a_concurrent_creation_of_the_same_id() {
        let kv = MemoryKv::default();
        let store = PipelineStore::new(&kv);
        let (refused, winner) = (spec("g1"), spec("g2"));
        for creation in [&refused, &winner] {
            store.save_spec(creation).unwrap();
            store.index(creation).unwrap();
        }
        store.forget(&refused).unwrap();
        assert_eq!(store.spec("p").unwrap(), Some(winner.clone()));
        assert_eq!(Index::pipelines(&kv).entries().unwrap(), ["p/g2"]);
        store.forget(&winner).unwrap();
        assert_eq!(store.spec("p").unwrap(), None);
        assert!(Index::pipelines(&kv).entries().unwrap().is_empty());
    }
}
