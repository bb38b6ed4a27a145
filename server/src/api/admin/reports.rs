//! The reports side of the Admin service: alerts and operation records
//! the agents sent.

use ccfleet_proto::pb;
use ccfleet_proto::HostId;
use tonic::{Request, Response, Status};

use crate::api::{convert, internal};
use crate::store::OperationFilter;
use crate::store::StoreHandle;

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
        let host_id = optional_host_id(&request.into_inner().host_id)?;
        let alerts = self
            .store
            .read(move |store| store.alerts(host_id.as_ref()))
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::ListAlertsResponse {
            alerts: alerts.iter().map(convert::alert_to_wire).collect(),
        }))
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
