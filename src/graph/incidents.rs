//! Security incidents: list, get, post a comment, and the wire → `model::Incident` conversion.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::Deserialize;

use super::{Error, GraphClient, wire};
use crate::http::{self, Request, Surface, encode_query_value};
use crate::model::{
    Alert, DetectionSource, Evidence, EvidenceKind, EvidenceRole, Incident, IncidentComment,
    IncidentStatus, ServiceSource, Severity, UserAccount,
};

/// The largest `$top` the incidents list accepts; more is a 400.
pub const MAX_INCIDENTS_TOP: u32 = 50;

/// Sent with every incident read so newer enum values arrive as themselves.
const PREFER_UNKNOWN_ENUMS: &str = "include-unknown-enum-members";

/// One incident of a page that could not be read; the rest of the page is unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("incident {} cannot be read: {detail}; it is skipped until it parses", id.as_deref().unwrap_or("(no id)"))]
pub struct IncidentError {
    pub id: Option<String>,
    pub detail: String,
}

/// What `list_incidents` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncidentQuery {
    /// Page size; values above 50 are lowered to 50.
    pub top: u32,
    /// Inline the alerts (with evidence) in the list.
    pub expand_alerts: bool,
}

impl Default for IncidentQuery {
    fn default() -> Self {
        Self {
            top: MAX_INCIDENTS_TOP,
            expand_alerts: false,
        }
    }
}

/// The incident list read page by page, following `@odata.nextLink` verbatim (and only to
/// the host of the first request).
pub struct IncidentPages<'a> {
    client: &'a GraphClient,
    origin: url::Origin,
    next: Option<Request>,
    pages: usize,
}

/// More pages than this in one listing is a service fault (a link that leads back to itself),
/// not a backlog: 25,000 pages are 1.25 million incidents.
pub const MAX_INCIDENT_PAGES: usize = 25_000;

impl IncidentPages<'_> {
    /// The next page, converted, or `None` after the last one.
    pub async fn next_page(
        &mut self,
    ) -> Result<Option<Vec<Result<Incident, IncidentError>>>, Error> {
        let Some(req) = self.next.take() else {
            return Ok(None);
        };
        let fail = |source| Error::ListIncidents { source };
        self.pages += 1;
        if self.pages > MAX_INCIDENT_PAGES {
            return Err(fail(http::Error::Url {
                input: "@odata.nextLink".into(),
                detail: format!(
                    "more than {MAX_INCIDENT_PAGES} pages; the service keeps sending next links"
                ),
            }));
        }
        let resp = self.client.http.send(req.clone()).await.map_err(fail)?;
        let page: wire::IncidentPage = resp.json().map_err(fail)?;
        drop(resp);
        if let Some(link) = page.next_link {
            // Verbatim: the link is used as sent, never rebuilt from its parts.
            let url = url::Url::parse(&link).map_err(|e| {
                fail(http::Error::Url {
                    input: "@odata.nextLink".into(),
                    detail: e.to_string(),
                })
            })?;
            if url.origin() != self.origin {
                return Err(fail(http::Error::ForeignLink {
                    host: url.host_str().unwrap_or("").to_string(),
                    expected: req.url.host_str().unwrap_or("").to_string(),
                }));
            }
            self.next = Some(Request { url, ..req });
        }
        Ok(Some(page.value.iter().map(parse_incident).collect()))
    }
}

impl GraphClient {
    /// Incidents updated at or after `since`, every page. A malformed incident is returned as
    /// an [`IncidentError`] in its place instead of failing the page. Holds every incident at
    /// once: a poller with a backlog reads [`GraphClient::incident_pages`] instead.
    pub async fn list_incidents(
        &self,
        since: DateTime<Utc>,
        q: IncidentQuery,
    ) -> Result<Vec<Result<Incident, IncidentError>>, Error> {
        let mut pages = self.incident_pages(since, q)?;
        let mut all = Vec::new();
        while let Some(page) = pages.next_page().await? {
            all.extend(page);
        }
        Ok(all)
    }

    /// The same list as [`GraphClient::list_incidents`], one page at a time, so a caller holds
    /// one page (≤ 50 incidents with their alerts and evidence) rather than the whole backlog.
    pub fn incident_pages(
        &self,
        since: DateTime<Utc>,
        q: IncidentQuery,
    ) -> Result<IncidentPages<'_>, Error> {
        let top = q.top.clamp(1, MAX_INCIDENTS_TOP);
        // To the millisecond, rounded down (never after `since`): cut to whole seconds, the
        // filter listed again every incident updated earlier in the cursor's second, a whole
        // backlog when its comments were posted within one second. OData `DateTimeOffset`
        // literals take fractional seconds (`2025-03-01T10:00:00.123Z`); whole seconds are
        // written without a fraction.
        let filter = format!(
            "lastUpdateDateTime ge {}",
            since
                .trunc_subsecs(3)
                .to_rfc3339_opts(SecondsFormat::AutoSi, true)
        );
        let mut pq = format!(
            "/security/incidents?$filter={}&$top={top}",
            encode_query_value(&filter)
        );
        if q.expand_alerts {
            pq.push_str("&$expand=alerts");
        }
        let req = Request::get(Surface::GraphSecurity, self.http.graph_url(&pq)?)
            .with_header("Prefer", PREFER_UNKNOWN_ENUMS);
        Ok(IncidentPages {
            client: self,
            origin: req.url.origin(),
            next: Some(req),
            pages: 0,
        })
    }

    /// One incident with its alerts and evidence.
    pub async fn get_incident(&self, id: &str) -> Result<Incident, Error> {
        check_incident_id(id)?;
        let url = self
            .http
            .graph_url(&format!("/security/incidents/{id}?$expand=alerts"))?;
        let req =
            Request::get(Surface::GraphSecurity, url).with_header("Prefer", PREFER_UNKNOWN_ENUMS);
        let resp = self
            .http
            .send(req)
            .await
            .map_err(|source| Error::GetIncident {
                id: id.to_string(),
                source,
            })?;
        let v: serde_json::Value = resp.json()?;
        parse_incident(&v).map_err(|e| Error::BadIncident(Box::new(e)))
    }

    /// Posts `text` as a comment and returns the incident's whole comment list. Not
    /// idempotent: after [`Error::is_ambiguous`] the caller must re-read the comments before
    /// any retry, because the comment may already be there.
    pub async fn post_comment(&self, id: &str, text: &str) -> Result<Vec<IncidentComment>, Error> {
        check_incident_id(id)?;
        let url = self
            .http
            .graph_url(&format!("/security/incidents/{id}/comments"))?;
        let body = serde_json::json!({
            "@odata.type": "microsoft.graph.security.alertComment",
            "comment": text,
        });
        let req = Request::post(Surface::GraphSecurity, url, body).non_idempotent();
        let resp = self
            .http
            .send(req)
            .await
            .map_err(|source| Error::PostComment {
                id: id.to_string(),
                source,
            })?;
        let list: wire::List<wire::Comment> = resp.json()?;
        Ok(list.value.into_iter().map(comment).collect())
    }
}

/// Incident ids are numeric strings; anything else could change the request path.
fn check_incident_id(id: &str) -> Result<(), Error> {
    if !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        Ok(())
    } else {
        Err(Error::InvalidIncidentId(id.chars().take(80).collect()))
    }
}

/// Converts one incident as Graph sends it (with or without `alerts` expanded). Also used for
/// incidents exported to a file.
pub fn parse_incident(v: &serde_json::Value) -> Result<Incident, IncidentError> {
    let id = v.get("id").and_then(|x| x.as_str()).map(str::to_string);
    let fail = |detail: String| IncidentError {
        id: id.clone(),
        detail,
    };
    let w = wire::Incident::deserialize(v).map_err(|e| fail(e.to_string()))?;
    let mut alerts = Vec::new();
    for a in w.alerts.unwrap_or_default() {
        alerts.push(alert(a).map_err(&fail)?);
    }
    Ok(Incident {
        id: w.id,
        display_name: w.display_name.unwrap_or_default(),
        severity: Severity::parse(w.severity.as_deref().unwrap_or("unknown")),
        status: IncidentStatus::parse(w.status.as_deref().unwrap_or("unknown")),
        redirect_incident_id: w.redirect_incident_id.filter(|s| !s.is_empty()),
        assigned_to: w.assigned_to.filter(|s| !s.trim().is_empty()),
        created_at: w.created_date_time,
        last_update_at: w.last_update_date_time.unwrap_or(w.created_date_time),
        alerts,
        comments: w
            .comments
            .unwrap_or_default()
            .into_iter()
            .map(comment)
            .collect(),
    })
}

fn alert(a: wire::Alert) -> Result<Alert, String> {
    let mut evidence = Vec::new();
    for e in a.evidence.unwrap_or_default() {
        evidence.push(evidence_item(&e).map_err(|d| format!("alert {}: {d}", a.id))?);
    }
    Ok(Alert {
        title: a.title.unwrap_or_default(),
        severity: Severity::parse(a.severity.as_deref().unwrap_or("unknown")),
        service_source: ServiceSource::parse(a.service_source.as_deref().unwrap_or("unknown")),
        detection_source: DetectionSource::parse(
            a.detection_source.as_deref().unwrap_or("unknown"),
        ),
        id: a.id,
        evidence,
    })
}

fn evidence_item(v: &serde_json::Value) -> Result<Evidence, String> {
    let base = wire::EvidenceBase::deserialize(v).map_err(|e| format!("evidence: {e}"))?;
    let odata_type = base.odata_type.unwrap_or_default();
    // `#microsoft.graph.security.deviceEvidence` → `deviceevidence`
    let short = odata_type
        .rsplit('.')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let de = |e: serde_json::Error| format!("{odata_type}: {e}");
    let kind = match short.as_str() {
        "deviceevidence" => {
            let d = wire::DeviceEvidence::deserialize(v).map_err(de)?;
            let dns_name = d
                .device_dns_name
                .or_else(|| host_dns_name(d.host_name, d.dns_domain));
            EvidenceKind::Device {
                mde_device_id: d.mde_device_id,
                azure_ad_device_id: d.azure_ad_device_id,
                dns_name,
                os_platform: d.os_platform,
                rbac_group_id: d.rbac_group_id,
                rbac_group_name: d.rbac_group_name,
            }
        }
        "userevidence" => {
            let u = wire::UserEvidence::deserialize(v).map_err(de)?;
            EvidenceKind::User {
                account: account(u.user_account.unwrap_or_default()),
            }
        }
        "mailboxevidence" => {
            let m = wire::MailboxEvidence::deserialize(v).map_err(de)?;
            EvidenceKind::Mailbox {
                primary_address: m.primary_address,
                upn: m.upn,
                display_name: m.display_name,
                account: m.user_account.map(account),
            }
        }
        "processevidence" => {
            let p = wire::ProcessEvidence::deserialize(v).map_err(de)?;
            EvidenceKind::Process {
                account: p.user_account.map(account),
                mde_device_id: p.mde_device_id,
            }
        }
        "fileevidence" => {
            let f = wire::FileEvidence::deserialize(v).map_err(de)?;
            EvidenceKind::File {
                mde_device_id: f.mde_device_id,
            }
        }
        _ => EvidenceKind::Other { odata_type },
    };
    Ok(Evidence {
        kind,
        roles: base
            .roles
            .unwrap_or_default()
            .iter()
            .map(|r| EvidenceRole::parse(r))
            .collect(),
    })
}

/// `deviceEvidence` may carry the host name and its DNS domain without `deviceDnsName`; joined
/// they are the DNS name a desired state lists (the host name alone is kept too: the scope
/// matches it against the first label of a listed name).
fn host_dns_name(host: Option<String>, domain: Option<String>) -> Option<String> {
    let host = host
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())?;
    match domain.map(|d| d.trim().trim_matches('.').to_owned()) {
        Some(domain) if !domain.is_empty() && !host.contains('.') => {
            Some(format!("{host}.{domain}"))
        }
        _ => Some(host),
    }
}

fn account(a: wire::UserAccount) -> UserAccount {
    UserAccount {
        azure_ad_user_id: a.azure_ad_user_id,
        user_principal_name: a.user_principal_name,
        account_name: a.account_name,
        domain_name: a.domain_name,
        display_name: a.display_name,
    }
}

fn comment(c: wire::Comment) -> IncidentComment {
    IncidentComment {
        comment: c.comment.unwrap_or_default(),
        created_by: c.created_by_display_name.or(c.created_by),
        created_at: c.created_date_time.or(c.created_time),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn incident_ids_are_checked_before_they_reach_a_path() {
        for (id, ok) in [
            ("2972395", true),
            ("abc-1", true),
            ("", false),
            ("1/../x", false),
            ("1?x", false),
        ] {
            assert_eq!(check_incident_id(id).is_ok(), ok, "{id:?}");
        }
    }

    #[test]
    fn minimal_incident_tolerates_missing_fields() {
        let inc =
            parse_incident(&json!({"id": "7", "createdDateTime": "2025-01-01T00:00:00Z"})).unwrap();
        assert_eq!(inc.severity, Severity::Unknown);
        assert_eq!(inc.last_update_at, inc.created_at);
        assert!(inc.alerts.is_empty());
    }

    #[test]
    fn malformed_incident_names_its_id() {
        let err = parse_incident(&json!({"id": "9", "createdDateTime": "yesterday"})).unwrap_err();
        assert_eq!(err.id.as_deref(), Some("9"));
        let err = parse_incident(&json!({"createdDateTime": "2025-01-01T00:00:00Z"})).unwrap_err();
        assert_eq!(err.id, None);
    }
}
