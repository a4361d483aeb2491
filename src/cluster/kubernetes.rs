//! Kubernetes: the members as one Indexed Job (pod `I` runs member `I`, from `JOB_COMPLETION_INDEX`),
//! written as a manifest for `kubectl apply`, never applied by ailla.

use std::path::{Path, PathBuf};

use super::{member_command, safe_name, Job};
use crate::{Error, Result};

/// Where the manifest is written.
pub fn manifest_path(run_dir: &Path) -> PathBuf {
    run_dir.join("kubernetes").join("job.yaml")
}

/// What the pods need beyond the [`Job`].
pub struct KubernetesOptions {
    pub image: String,
    pub volume_claim: String,
    pub namespace: Option<String>,
    pub mem: Option<String>,
}

/// A name Kubernetes accepts for the Job (RFC 1123: lower-case letters, digits and `-`, at most 63).
pub fn job_name(pipeline: &str) -> String {
    let mut name: String = format!("ailla-{pipeline}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

/// A YAML scalar: JSON's quoting is valid YAML, so no value can change the manifest's structure.
fn quoted(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "\"\"".into())
}

/// The manifest: every member is a completion index (a finished one ends at once, as `--resume`
/// leaves it alone), the working directory is the claim's mount, and each pod gets its CPUs.
pub fn manifest(job: &Job, options: &KubernetesOptions) -> Result<String> {
    if !job.run_dir.starts_with(&job.working_dir) {
        return Err(Error::invalid(
            "outputs.dir",
            format!(
                "{} is outside the working directory {}, which is what the pods mount; put the run directory \
                 inside it",
                job.run_dir.display(),
                job.working_dir.display()
            ),
        ));
    }
    let count = job.plan.members.len();
    let command = member_command(job, "\"$JOB_COMPLETION_INDEX\"");
    let mut resources = format!("            cpu: {}\n", quoted(&job.threads.to_string()));
    if let Some(mem) = &options.mem {
        resources += &format!("            memory: {}\n", quoted(mem));
    }
    let namespace = options.namespace.as_ref().map_or(String::new(), |n| format!("  namespace: {}\n", quoted(n)));
    let working_dir = quoted(&job.working_dir.display().to_string());
    Ok(format!(
        "# Written by `ailla submit kubernetes`: pod I runs member I of `{plan}` (`ailla run --resume RUN_DIR\n\
         # --list-members` numbers them) with {threads} thread(s). Apply it with `kubectl apply -f`; once the Job is\n\
         # complete, write the report with `ailla run --resume {run_dir} --report-only`.\n\
         apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n{namespace}spec:\n  completionMode: Indexed\n  \
         completions: {count}\n  parallelism: {count}\n  backoffLimit: 0\n  template:\n    spec:\n      \
         restartPolicy: Never\n      containers:\n        - name: member\n          image: {image}\n          \
         workingDir: {working_dir}\n          command: [\"/bin/sh\", \"-c\", {command}]\n          resources:\n            \
         requests:\n{resources_requests}            limits:\n{resources}          volumeMounts:\n            \
         - name: work\n              mountPath: {working_dir}\n      volumes:\n        - name: work\n          \
         persistentVolumeClaim:\n            claimName: {claim}\n",
        plan = safe_name(&job.plan.name),
        threads = job.threads,
        run_dir = job.run_dir.display(),
        name = job_name(&job.plan.name),
        image = quoted(&options.image),
        command = quoted(&format!("exec {command}")),
        resources_requests = resources.replace("            ", "              "),
        resources = resources.replace("            ", "              "),
        claim = quoted(&options.volume_claim),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_what_kubernetes_accepts() {
        assert_eq!(job_name("Sweep_λ.1"), "ailla-sweep---1");
        assert_eq!(job_name(&"x".repeat(80)).len(), 63);
    }
}
