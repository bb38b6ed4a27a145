//! The reports side of the Admin service: alerts and operation records
//! the agents sent, and the admin's acknowledgement of an alert.

use ccfleet_proto::pb;
use ccfleet_proto::HostId;
use tonic::{Request, Response, Status};

use crate::api::{convert, internal, paging};
use crate::auth;
use crate::model::alerts::MAX_ACK_MS;
use crate::model::{now_millis, AlertAckRecord, AuditRecord};
use crate::store::{AckOutcome, AlertFilter, OperationFilter, StoreHandle};

/// What the report methods use of the service.
pub struct ReportsAdmin<'a> {
    pub store: &'a StoreHandle,
}

/// Operations listed when the request names no limit, and the most one
/// request may ask for.
const DEFAULT_OPERATION_LIMIT: usize = 100;
const MAX_OPERATION_LIMIT: usize = 10_000;

fn optional_host_id(value: &str) -> Result<Option<HostId>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    convert::host_id("host_id", value).map(Some)
}

impl ReportsAdmin<'_> {
    pub async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let request = request.into_inner();
        let filter = AlertFilter {
            host_id: optional_host_id(&request.host_id)?,
            all: request.all,
            after: paging::alert_after(&request.page_token)?,
            limit: paging::page_size(request.page_size),
        };
        let now = now_millis();
        let (alerts, next) = self
            .store
            .read(move |store| store.alert_page(&filter, now))
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::ListAlertsResponse {
            alerts: alerts.iter().map(|alert| convert::alert_to_wire(alert, now)).collect(),
            next_page_token: next.as_ref().map(paging::alert_token).unwrap_or_default(),
        }))
    }

    /// Acknowledges an alert, with its audit entry in the same transaction.
    pub async fn acknowledge_alert(
        &self,
        request: Request<pb::AcknowledgeAlertRequest>,
    ) -> Result<Response<pb::Alert>, Status> {
        let caller = auth::authenticated(&request)?;
        let request = request.into_inner();
        let id: u64 = request
            .id
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| convert::invalid("id", format!("{:?} is not an alert id (a number)", request.id)))?;
        let reason = convert::message(&request.reason);
        if reason.trim().is_empty() {
            return Err(convert::invalid(
                "reason",
                "is required: say why the alert may stay quiet",
            ));
        }
        if request.for_seconds.saturating_mul(1000) > MAX_ACK_MS {
            return Err(convert::invalid(
                "for_seconds",
                format!("must be at most {} days", MAX_ACK_MS / 86_400_000),
            ));
        }
        let now = now_millis();
        let until = (request.for_seconds > 0).then(|| now + request.for_seconds * 1000);
        let ack = AlertAckRecord {
            by: caller.identity.name().to_owned(),
            reason: reason.clone(),
            at: now,
            until,
        };
        let detail = match until {
            Some(until) => format!(
                "until {}: {reason}",
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(until))
            ),
            None => format!("until it fails again or recovers: {reason}"),
        };
        let entry = AuditRecord {
            at: now,
            who: caller.identity.name().to_owned(),
            action: "alert.ack".into(),
            target: id.to_string(),
            detail,
        };
        let outcome = self
            .store
            .write(move |store| store.acknowledge_alert(id, ack, &entry, now))
            .await
            .map_err(internal)?;
        match outcome {
            AckOutcome::Acknowledged(alert) => {
                tracing::info!(admin = caller.identity.name(), alert = id, host = %alert.host_id, domain = %alert.domain, "alert acknowledged");
                Ok(Response::new(convert::alert_to_wire(&alert, now)))
            }
            AckOutcome::NotFound => Err(Status::not_found(format!("there is no alert {id}"))),
            AckOutcome::Refused(refusal) => Err(Status::failed_precondition(refusal.to_string())),
        }
    }

    pub async fn list_operations(
        &self,
        request: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.limit {
            0 => DEFAULT_OPERATION_LIMIT,
            limit if limit as usize > MAX_OPERATION_LIMIT => {
                return Err(convert::invalid(
                    "limit",
                    format!("must be at most {MAX_OPERATION_LIMIT}"),
                ))
            }
            limit => limit as usize,
        };
        let filter = OperationFilter {
            host_id: optional_host_id(&request.host_id)?,
            domain: if request.domain.is_empty() {
                None
            } else {
                Some(convert::domain("domain", &request.domain)?)
            },
            limit,
        };
        let operations = self
            .store
            .read(move |store| store.operations(&filter))
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::ListOperationsResponse {
            operations: operations.iter().map(convert::operation_to_wire).collect(),
        }))
    }
}
