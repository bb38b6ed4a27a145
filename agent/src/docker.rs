//! The only module that touches bollard: what the local Docker Engine says
//! about one stack (services, the version label, replicas, update state,
//! container health, volumes, containers still running), about secrets, and
//! about itself (engine version).
//!
//! The observation is plain data ([`StackObservation`]); deciding what it
//! means for an app (converged, degraded, drift) belongs to `reconcile`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use bollard::models::{
    ContainerSummaryStateEnum, HealthStatusEnum, ServiceUpdateStatusStateEnum, Task, TaskSpec, TaskState,
};
use bollard::query_parameters::{
    ListContainersOptions, ListSecretsOptions, ListServicesOptions, ListTasksOptions, ListVolumesOptions,
};
use serde::{Deserialize, Serialize};

/// Label that `docker stack deploy` puts on everything of a stack.
pub const STACK_NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

/// Why Docker could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot connect to the Docker Engine ({endpoint})")]
    Connect {
        endpoint: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("docker: {what}")]
    Request {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// A connection to the local Docker Engine.
#[derive(Debug, Clone)]
pub struct Docker {
    client: bollard::Docker,
}

/// One stack as Docker shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackObservation {
    pub stack: String,
    /// The stack's services by name (`<stack>_app`, ...); empty when nothing is deployed.
    pub services: BTreeMap<String, ServiceObservation>,
    /// Health of the stack's running containers that have a healthcheck.
    pub containers: Vec<ContainerObservation>,
}

/// One volume of a stack (label `com.docker.stack.namespace=<stack>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackVolume {
    /// The volume's full name (`<stack>_<volume>`).
    pub name: String,
    /// `local` for volumes whose data sits under [`StackVolume::mountpoint`].
    pub driver: String,
    /// Where the volume's data is on the host.
    pub mountpoint: PathBuf,
    pub labels: BTreeMap<String, String>,
}

/// One service of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceObservation {
    pub name: String,
    /// `Spec.Labels`.
    pub labels: BTreeMap<String, String>,
    /// Replicas the service asks for (for global services: tasks meant to run).
    pub desired_replicas: u32,
    /// Tasks of the service that are running now.
    pub running_replicas: u32,
    /// `UpdateStatus.State` (`updating`, `paused`, `completed`,
    /// `rollback_started`, ...); `None` for a service never updated.
    pub update_state: Option<String>,
    /// `UpdateStatus.Message`, when Docker gave one.
    pub update_message: Option<String>,
    /// The most recent error of a task that failed or was rejected, when the
    /// service is short of replicas (what Docker says about why).
    pub last_task_error: Option<String>,
    /// Tasks made from the service's current spec that ended failed or
    /// rejected (Swarm keeps a few per slot: its task history limit).
    #[serde(default)]
    pub current_spec_failures: u32,
    /// The most recent error of those tasks, as Docker wrote it.
    #[serde(default)]
    pub current_spec_error: Option<String>,
}

/// Health of one container of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerObservation {
    pub name: String,
    /// The service it belongs to (`com.docker.swarm.service.name`).
    pub service: Option<String>,
    pub health: ContainerHealth,
    /// Whether its task was made from its service's current spec (the
    /// version just deployed), not an older task still being replaced.
    #[serde(default)]
    pub current_spec: bool,
}

/// A container's healthcheck state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerHealth {
    Starting,
    Healthy,
    Unhealthy,
}

impl ServiceObservation {
    /// True while Docker is still rolling an update or a rollback.
    pub fn update_in_flight(&self) -> bool {
        matches!(self.update_state.as_deref(), Some("updating" | "rollback_started"))
    }
}

impl StackObservation {
    /// The `<stack>_app` service, where the version labels live.
    pub fn app_service(&self) -> Option<&ServiceObservation> {
        self.services.get(&format!("{}_app", self.stack))
    }

    /// `coop-cloud.<stack>.version` on the app service, as written.
    pub fn version_label(&self) -> Option<&str> {
        self.app_label("version")
    }

    /// Whether this is a chaos deploy (`coop-cloud.<stack>.chaos`, key name
    /// unconfirmed): any value but `false` or empty counts.
    pub fn chaos(&self) -> bool {
        self.app_label("chaos")
            .is_some_and(|value| !value.is_empty() && !value.eq_ignore_ascii_case("false"))
    }

    /// `coop-cloud.<stack>.chaos-version` (key name unconfirmed).
    pub fn chaos_version(&self) -> Option<&str> {
        self.app_label("chaos-version")
    }

    fn app_label(&self, suffix: &str) -> Option<&str> {
        let key = format!("coop-cloud.{}.{suffix}", self.stack);
        self.app_service()?.labels.get(&key).map(String::as_str)
    }
}

impl Docker {
    /// Connects to `DOCKER_HOST` when set, the local socket otherwise, and
    /// agrees an API version with the engine (bollard asks for a newer one
    /// than older engines, such as Debian's 20.10, accept).
    pub async fn connect() -> Result<Docker, DockerError> {
        let endpoint = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        let client = bollard::Docker::connect_with_defaults().map_err(|source| DockerError::Connect {
            endpoint: endpoint.clone(),
            source,
        })?;
        let client = client
            .negotiate_version()
            .await
            .map_err(|source| DockerError::Connect { endpoint, source })?;
        Ok(Docker { client })
    }

    /// The engine's version (`20.10.24+dfsg1`), for the host's facts.
    pub async fn engine_version(&self) -> Result<String, DockerError> {
        let version = self.client.version().await.map_err(|source| DockerError::Request {
            what: "cannot read the engine version".into(),
            source,
        })?;
        Ok(version.version.unwrap_or_else(|| "unknown".into()))
    }

    /// The volumes of `stack`, sorted by name. They outlive `docker stack rm`
    /// (and `abra app undeploy`), so this answers for an undeployed stack too.
    pub async fn stack_volumes(&self, stack: &str) -> Result<Vec<StackVolume>, DockerError> {
        let response = self
            .client
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(namespace_filter(stack)),
            }))
            .await
            .map_err(|source| DockerError::Request {
                what: format!("cannot list the volumes of stack {stack}"),
                source,
            })?;
        let mut volumes: Vec<StackVolume> = response
            .volumes
            .unwrap_or_default()
            .into_iter()
            // The engine filters by label already; this keeps a stack's
            // volumes even from an engine that ignored the filter apart.
            .filter(|volume| volume.labels.get(STACK_NAMESPACE_LABEL).map(String::as_str) == Some(stack))
            .map(|volume| StackVolume {
                name: volume.name,
                driver: volume.driver,
                mountpoint: PathBuf::from(volume.mountpoint),
                labels: volume.labels.into_iter().collect(),
            })
            .collect();
        volumes.sort_by(|left, right| left.name.cmp(&right.name));
        Ok(volumes)
    }

    /// How many containers of `stack` exist in any state but exited or dead:
    /// after `docker stack rm` the services vanish at once but their
    /// containers take a moment to stop, and a volume must not be copied
    /// while one still writes to it. A created container counts: a task's
    /// container can start from there during the copy. A state the engine
    /// does not name counts as running.
    pub async fn running_containers(&self, stack: &str) -> Result<usize, DockerError> {
        let containers = self
            .client
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(namespace_filter(stack)),
                ..Default::default()
            }))
            .await
            .map_err(|source| DockerError::Request {
                what: format!("cannot list the containers of stack {stack}"),
                source,
            })?;
        Ok(containers
            .iter()
            .filter(|container| {
                !matches!(
                    container.state,
                    Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD)
                )
            })
            .count())
    }

    /// The names of the containers, of any stack or none, that mount the
    /// volume `volume` and are not exited or dead (Docker's `volume=`
    /// filter, so a container started by hand counts too): a snapshot or a
    /// restore must not run under a process that can change the volume.
    pub async fn containers_using_volume(&self, volume: &str) -> Result<Vec<String>, DockerError> {
        let containers = self
            .client
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([("volume".to_owned(), vec![volume.to_owned()])])),
                ..Default::default()
            }))
            .await
            .map_err(|source| DockerError::Request {
                what: format!("cannot list the containers that mount volume {volume}"),
                source,
            })?;
        Ok(containers
            .into_iter()
            .filter(|container| {
                !matches!(
                    container.state,
                    Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD)
                )
            })
            .map(|container| {
                container
                    .names
                    .and_then(|names| names.into_iter().next())
                    .map(|name| name.trim_start_matches('/').to_owned())
                    .or(container.id)
                    .unwrap_or_else(|| "(unnamed)".to_owned())
            })
            .collect())
    }

    /// Whether a swarm secret named exactly `name` exists
    /// (`<stack>_<secret>_<version>`, ARCHITECTURE.md, "What ccfleet relies on from abra and Docker").
    pub async fn secret_exists(&self, name: &str) -> Result<bool, DockerError> {
        // Listing by name, then comparing exactly: inspecting by name would
        // also match a secret whose id starts with `name`.
        let secrets = self
            .client
            .list_secrets(Some(ListSecretsOptions {
                filters: Some(HashMap::from([("name".to_owned(), vec![name.to_owned()])])),
            }))
            .await
            .map_err(|source| DockerError::Request {
                what: format!("cannot list the secrets named {name}"),
                source,
            })?;
        Ok(secrets
            .iter()
            .any(|secret| secret.spec.as_ref().and_then(|spec| spec.name.as_deref()) == Some(name)))
    }

    /// Everything the agent needs to know about `stack`. A stack with no
    /// services is not deployed; that is an observation, not an error.
    pub async fn observe_stack(&self, stack: &str) -> Result<StackObservation, DockerError> {
        let namespace_filter = namespace_filter(stack);
        let services = self
            .client
            .list_services(Some(ListServicesOptions {
                filters: Some(namespace_filter.clone()),
                status: Some(true),
            }))
            .await
            .map_err(|source| DockerError::Request {
                what: format!("cannot list the services of stack {stack}"),
                source,
            })?;

        let mut observed = BTreeMap::new();
        let mut current_tasks = HashSet::new();
        for service in services {
            let Some(spec) = service.spec else { continue };
            let Some(name) = spec.name else { continue };
            let Some(id) = service.id else { continue };
            let tasks = self
                .client
                .list_tasks(Some(ListTasksOptions {
                    filters: Some(HashMap::from([("service".to_owned(), vec![id.clone()])])),
                }))
                .await
                .map_err(|source| DockerError::Request {
                    what: format!("cannot list the tasks of service {name}"),
                    source,
                })?;
            // A running task counts only when it runs the service's current
            // spec: right after `docker stack deploy` the old task still runs
            // under the new labels until the update starts.
            let running_replicas = tasks
                .iter()
                .filter(|task| task.desired_state == Some(TaskState::RUNNING))
                .filter(|task| task.status.as_ref().and_then(|status| status.state) == Some(TaskState::RUNNING))
                .filter(|task| runs_current_spec(task.spec.as_ref(), spec.task_template.as_ref()))
                .count();
            let docker_desired = service
                .service_status
                .as_ref()
                .and_then(|status| status.desired_tasks)
                .unwrap_or(0);
            let desired_replicas = match spec.mode.as_ref() {
                Some(mode) if mode.replicated.is_some() => mode
                    .replicated
                    .as_ref()
                    .and_then(|replicated| replicated.replicas)
                    .unwrap_or(1)
                    .max(0) as u64,
                // A global service runs one task per node, and this swarm has
                // at least this one: right after a deploy Docker may still say
                // 0, which must not pass for converged.
                Some(mode) if mode.global.is_some() => docker_desired.max(1),
                // Jobs: Docker's own count of tasks meant to run.
                _ => docker_desired,
            };
            current_tasks.extend(
                tasks
                    .iter()
                    .filter(|task| runs_current_spec(task.spec.as_ref(), spec.task_template.as_ref()))
                    .filter_map(|task| task.id.clone()),
            );
            let failed: Vec<&Task> = tasks
                .iter()
                .filter(|task| {
                    matches!(
                        task.status.as_ref().and_then(|status| status.state),
                        Some(TaskState::FAILED | TaskState::REJECTED)
                    )
                })
                .collect();
            let last_task_error = latest_error(failed.iter().copied());
            let current_failed: Vec<&Task> = failed
                .iter()
                .copied()
                .filter(|task| runs_current_spec(task.spec.as_ref(), spec.task_template.as_ref()))
                .collect();
            let current_spec_failures = u32::try_from(current_failed.len()).unwrap_or(u32::MAX);
            let current_spec_error = latest_error(current_failed.into_iter());
            let update_state = service
                .update_status
                .as_ref()
                .and_then(|status| status.state)
                .filter(|state| *state != ServiceUpdateStatusStateEnum::EMPTY)
                .map(|state| state.to_string());
            let running_replicas = running_replicas as u64;
            observed.insert(
                name.clone(),
                ServiceObservation {
                    name,
                    labels: spec.labels.unwrap_or_default().into_iter().collect(),
                    desired_replicas: u32::try_from(desired_replicas).unwrap_or(u32::MAX),
                    running_replicas: u32::try_from(running_replicas).unwrap_or(u32::MAX),
                    update_state,
                    update_message: service.update_status.and_then(|status| status.message),
                    last_task_error: (running_replicas < desired_replicas)
                        .then_some(last_task_error)
                        .flatten(),
                    current_spec_failures,
                    current_spec_error,
                },
            );
        }

        let containers = if observed.is_empty() {
            Vec::new()
        } else {
            self.container_health(stack, namespace_filter, &current_tasks).await?
        };
        Ok(StackObservation {
            stack: stack.to_owned(),
            services: observed,
            containers,
        })
    }

    async fn container_health(
        &self,
        stack: &str,
        namespace_filter: HashMap<String, Vec<String>>,
        current_tasks: &HashSet<String>,
    ) -> Result<Vec<ContainerObservation>, DockerError> {
        let summaries = self
            .client
            .list_containers(Some(ListContainersOptions {
                all: false,
                filters: Some(namespace_filter),
                ..Default::default()
            }))
            .await
            .map_err(|source| DockerError::Request {
                what: format!("cannot list the containers of stack {stack}"),
                source,
            })?;
        let mut containers = Vec::new();
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            // Health is only in the full inspection on older engines (the
            // summary's `Health` field is recent); a container that vanished
            // between the two calls is simply no longer part of the stack.
            let inspection = match self.client.inspect_container(&id, None).await {
                Ok(inspection) => inspection,
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => continue,
                Err(source) => {
                    return Err(DockerError::Request {
                        what: format!("cannot inspect container {id} of stack {stack}"),
                        source,
                    })
                }
            };
            // A container that has just exited is listed a moment longer,
            // and Docker marks a stopped container's health `unhealthy`: that
            // is a crash, which its task reports, not a healthcheck's verdict.
            if inspection.state.as_ref().and_then(|state| state.running) == Some(false) {
                continue;
            }
            let health = inspection
                .state
                .as_ref()
                .and_then(|state| state.health.as_ref())
                .and_then(|health| health.status);
            let health = match health {
                Some(HealthStatusEnum::STARTING) => ContainerHealth::Starting,
                Some(HealthStatusEnum::HEALTHY) => ContainerHealth::Healthy,
                Some(HealthStatusEnum::UNHEALTHY) => ContainerHealth::Unhealthy,
                // No healthcheck: nothing to report.
                Some(HealthStatusEnum::NONE | HealthStatusEnum::EMPTY) | None => continue,
            };
            let labels = summary.labels.unwrap_or_default();
            containers.push(ContainerObservation {
                name: inspection
                    .name
                    .map(|name| name.trim_start_matches('/').to_owned())
                    .unwrap_or(id),
                service: labels.get("com.docker.swarm.service.name").cloned(),
                health,
                current_spec: labels
                    .get("com.docker.swarm.task.id")
                    .is_some_and(|task| current_tasks.contains(task)),
            });
        }
        containers.sort_by(|left, right| left.name.cmp(&right.name));
        Ok(containers)
    }
}

/// What Docker says about the most recent of `tasks`: its error, else its
/// message. The object version grows with every change, so the highest is the
/// latest.
fn latest_error<'a>(tasks: impl Iterator<Item = &'a Task>) -> Option<String> {
    tasks
        .max_by_key(|task| task.version.as_ref().and_then(|version| version.index))
        .and_then(|task| task.status.as_ref())
        .map(|status| {
            status
                .err
                .clone()
                .or_else(|| status.message.clone())
                .unwrap_or_else(|| "task failed".into())
        })
}

/// The engine filter for everything of `stack`.
fn namespace_filter(stack: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![format!("{STACK_NAMESPACE_LABEL}={stack}")])])
}

/// Whether a task was made from the service's current task template. Swarm
/// decides this by deep equality of the two specs, but the API shows them with
/// different defaults filled in (`DNSConfig`, the restart delay, `Runtime`), so
/// this compares what a deploy changes: the image, command, arguments,
/// environment, labels and the force-update counter.
fn runs_current_spec(task: Option<&TaskSpec>, service: Option<&TaskSpec>) -> bool {
    let (Some(task), Some(service)) = (task, service) else {
        return false;
    };
    if task.force_update != service.force_update {
        return false;
    }
    match (&task.container_spec, &service.container_spec) {
        (Some(task), Some(service)) => {
            task.image == service.image
                && task.command == service.command
                && task.args == service.args
                && task.env == service.env
                && task.labels == service.labels
                // A release that only bumps a secret or config version, or
                // changes a mount, keeps the image: compare those by name
                // and target (Docker fills in IDs and defaults alike).
                && secret_names(task) == secret_names(service)
                && config_names(task) == config_names(service)
                && mount_targets(task) == mount_targets(service)
        }
        (None, None) => true,
        _ => false,
    }
}

type ContainerSpec = bollard::models::TaskSpecContainerSpec;

fn secret_names(spec: &ContainerSpec) -> Vec<(Option<String>, Option<String>)> {
    let mut names: Vec<_> = spec
        .secrets
        .iter()
        .flatten()
        .map(|secret| {
            (
                secret.secret_name.clone(),
                secret.file.as_ref().and_then(|file| file.name.clone()),
            )
        })
        .collect();
    names.sort();
    names
}

fn config_names(spec: &ContainerSpec) -> Vec<(Option<String>, Option<String>)> {
    let mut names: Vec<_> = spec
        .configs
        .iter()
        .flatten()
        .map(|config| {
            (
                config.config_name.clone(),
                config.file.as_ref().and_then(|file| file.name.clone()),
            )
        })
        .collect();
    names.sort();
    names
}

fn mount_targets(spec: &ContainerSpec) -> Vec<(Option<String>, Option<String>)> {
    let mut mounts: Vec<_> = spec
        .mounts
        .iter()
        .flatten()
        .map(|mount| (mount.target.clone(), mount.source.clone()))
        .collect();
    mounts.sort();
    mounts
}
