//! Hosts as last reported by their providers, with the operator's settings and live usage.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use sqlx::SqliteConnection;
use uuid::Uuid;

use super::rows::StoredRow;
use super::{StoreResult, format_time, parse_enum, parse_json, parse_optional_time, parse_time, parse_uuid, to_json};
use crate::model::{Capacity, CapacityMode, Host, HostState, Usage, UsbDeviceGroup};

/// Hosts with what other tables know of them, in one statement: usage summed over live
/// instances, groups (a JSON array) and busy USB devices (a JSON object of device → instances
/// using one). `SELECT_HEAD`, a filter saying which instances' usage is summed (it must cover
/// the hosts the caller selects: a single host's usage is summed over its own instances only,
/// index `instances_live_by_host`), then `SELECT_TAIL`.
const SELECT_HEAD: &str = "SELECT h.*, \
        COALESCE(u.instances, 0) AS used_instances, COALESCE(u.running, 0) AS used_running, \
        COALESCE(u.vcpu, 0) AS used_vcpu, COALESCE(u.ram_mb, 0) AS used_ram_mb, COALESCE(u.disk_gb, 0) AS used_disk_gb, \
        (SELECT json_group_array(group_id) FROM \
            (SELECT group_id FROM host_groups WHERE host_id = h.id ORDER BY group_id)) AS group_ids, \
        (SELECT json_group_object(device, busy) FROM \
            (SELECT json_extract(placement, '$.usb_device') AS device, COUNT(*) AS busy FROM instances \
             WHERE host_id = h.id AND state != 'terminated' \
               AND json_extract(placement, '$.usb_device') IS NOT NULL GROUP BY device)) AS busy_usb \
    FROM hosts h LEFT JOIN ( \
        SELECT host_id, COUNT(*) AS instances, SUM(state = 'running') AS running, \
            SUM(vcpu) AS vcpu, SUM(ram_mb) AS ram_mb, SUM(disk_gb) AS disk_gb \
        FROM instances WHERE ";
const SELECT_TAIL: &str = " AND state != 'terminated' GROUP BY host_id) u ON u.host_id = h.id";

fn select_with_usage(counted: &str) -> String {
    format!("{SELECT_HEAD}{counted}{SELECT_TAIL}")
}

/// The read of the hosts the instances of `?1` (a JSON array of ids) are placed on.
pub(super) static SELECT_OF_INSTANCES: LazyLock<String> = LazyLock::new(|| {
    let hosts = "(SELECT host_id FROM instances WHERE id IN (SELECT value FROM json_each(?1)))";
    format!("{SELECT_HEAD}host_id IN {hosts}{SELECT_TAIL} WHERE h.id IN {hosts}")
});

pub(super) static SELECT_ALL: LazyLock<String> =
    LazyLock::new(|| format!("{} ORDER BY h.provider, h.name", select_with_usage("host_id IS NOT NULL")));
/// Binds the host's id twice.
static SELECT_ONE: LazyLock<String> = LazyLock::new(|| format!("{} WHERE h.id = ?", select_with_usage("host_id = ?")));
/// Binds the provider twice.
static SELECT_OF_PROVIDER: LazyLock<String> = LazyLock::new(|| {
    let counted = "host_id IN (SELECT id FROM hosts WHERE provider = ?)";
    format!("{} WHERE h.provider = ?", select_with_usage(counted))
});

pub(super) fn from_row(row: &impl StoredRow) -> StoreResult<Host> {
    let reported: HostState = parse_enum(row.value("state")?)?;
    let draining: bool = row.value("draining")?;
    let mut host = Host {
        id: parse_uuid(row.value("id")?)?,
        provider: row.value("provider")?,
        name: row.value("name")?,
        arch: parse_enum(row.value("arch")?)?,
        cpu: row.value("cpu")?,
        ram_mb: row.value::<i64>("ram_mb")? as u64,
        disk_gb: row.value::<i64>("disk_gb")? as u64,
        hypervisor: row.value("hypervisor")?,
        state: reported,
        draining,
        capacity: Capacity {
            mode: parse_enum(row.value("capacity_mode")?)?,
            max_instances: row.value("max_instances")?,
            vcpu: row.value("vcpu_limit")?,
            ram_mb: row.value::<Option<i64>>("ram_limit_mb")?.map(|ram| ram as u64),
            template_cache_mb: row.value::<Option<i64>>("template_cache_mb")?.map(|mib| mib as u64),
        },
        usage: Usage {
            instances: row.value("used_instances")?,
            running: row.value("used_running")?,
            vcpu: row.value("used_vcpu")?,
            ram_mb: row.value::<i64>("used_ram_mb")? as u64,
            disk_gb: row.value::<i64>("used_disk_gb")? as u64,
        },
        utilization: 0.0,
        maintenance: row.value("maintenance")?,
        labels: parse_json(row.value("labels")?)?,
        groups: parse_json::<Vec<String>>(row.value("group_ids")?)?
            .iter()
            .map(|id| parse_uuid(id))
            .collect::<StoreResult<_>>()?,
        usb_devices: usb_devices(row)?,
        cached_templates: parse_json(row.value("cached_templates")?)?,
        last_report_at: parse_optional_time(row.value("last_report_at")?)?,
        created_at: parse_time(row.value("created_at")?)?,
        updated_at: parse_time(row.value("updated_at")?)?,
    };
    host.state = effective_state(&host, reported);
    host.utilization = utilization(&host);
    Ok(host)
}

/// The host's USB devices by name: how many it has (the operator's setting) and how many
/// instances use one.
fn usb_devices(row: &impl StoredRow) -> StoreResult<BTreeMap<String, UsbDeviceGroup>> {
    let mut busy = parse_json::<HashMap<String, u32>>(row.value("busy_usb")?)?;
    let mut devices: BTreeMap<String, UsbDeviceGroup> = parse_json::<BTreeMap<String, u32>>(row.value("usb_devices")?)?
        .into_iter()
        .map(|(name, total)| {
            let used = busy.remove(&name).unwrap_or(0);
            (name, UsbDeviceGroup::new(total, used))
        })
        .collect();
    // Devices in use that the host no longer lists stay visible, with none available.
    devices.extend(busy.into_iter().map(|(name, used)| (name, UsbDeviceGroup::new(0, used))));
    Ok(devices)
}

/// The state placement sees: the reported one, unless the operator drains the host, or it is
/// unhealthy (full, yet none of its instances runs).
fn effective_state(host: &Host, reported: HostState) -> HostState {
    if reported != HostState::Active {
        return reported;
    }
    if host.draining {
        return HostState::Draining;
    }
    let full = match host.capacity.mode {
        CapacityMode::Number => host.capacity.max_instances.is_some_and(|max| host.usage.instances >= max),
        CapacityMode::Resource => host.usage.vcpu >= host.vcpu_limit() || host.usage.ram_mb >= host.ram_limit_mb(),
    };
    if full && host.usage.instances > 0 && host.usage.running == 0 { HostState::Unhealthy } else { HostState::Active }
}

fn utilization(host: &Host) -> f64 {
    let ratio = |used: f64, limit: f64| if limit > 0.0 { used / limit } else { 0.0 };
    let mut tightest = ratio(host.usage.disk_gb as f64, host.disk_gb as f64);
    if let Some(max) = host.capacity.max_instances {
        tightest = tightest.max(ratio(f64::from(host.usage.instances), f64::from(max)));
    }
    if host.capacity.mode == CapacityMode::Resource {
        tightest = tightest
            .max(ratio(f64::from(host.usage.vcpu), f64::from(host.vcpu_limit())))
            .max(ratio(host.usage.ram_mb as f64, host.ram_limit_mb() as f64));
    }
    (tightest * 1000.0).round() / 1000.0
}

pub async fn list(connection: &mut SqliteConnection) -> StoreResult<Vec<Host>> {
    let rows = sqlx::query(&SELECT_ALL).fetch_all(connection).await?;
    rows.iter().map(from_row).collect()
}

/// Hosts from the rows of [`SELECT_ALL`], in [`list`]'s order.
pub(super) fn from_rows(rows: &[impl StoredRow]) -> StoreResult<Vec<Host>> {
    let mut hosts = rows.iter().map(from_row).collect::<StoreResult<Vec<_>>>()?;
    hosts.sort_by(|one, other| (&one.provider, &one.name).cmp(&(&other.provider, &other.name)));
    Ok(hosts)
}

pub async fn get(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<Option<Host>> {
    let id = id.to_string();
    let row = sqlx::query(&SELECT_ONE).bind(&id).bind(&id).fetch_optional(connection).await?;
    row.as_ref().map(from_row).transpose()
}

/// Hosts of one provider keyed by their name within it.
pub async fn by_provider(connection: &mut SqliteConnection, provider: &str) -> StoreResult<HashMap<String, Host>> {
    let rows = sqlx::query(&SELECT_OF_PROVIDER).bind(provider).bind(provider).fetch_all(connection).await?;
    rows.iter().map(|row| from_row(row).map(|host| (host.name.clone(), host))).collect()
}

pub async fn insert(connection: &mut SqliteConnection, host: &Host) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO hosts (id, provider, name, arch, cpu, ram_mb, disk_gb, hypervisor, state, draining, maintenance, \
            capacity_mode, usb_devices, max_instances, vcpu_limit, ram_limit_mb, template_cache_mb, labels, \
            cached_templates, last_report_at, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(host.id.to_string())
    .bind(&host.provider)
    .bind(&host.name)
    .bind(host.arch.as_str())
    .bind(host.cpu)
    .bind(host.ram_mb as i64)
    .bind(host.disk_gb as i64)
    .bind(&host.hypervisor)
    .bind(host.state.as_str())
    .bind(host.draining)
    .bind(host.maintenance)
    .bind(host.capacity.mode.as_str())
    .bind(usb_totals(host))
    .bind(host.capacity.max_instances)
    .bind(host.capacity.vcpu)
    .bind(host.capacity.ram_mb.map(|ram| ram as i64))
    .bind(host.capacity.template_cache_mb.map(|mib| mib as i64))
    .bind(to_json(&host.labels))
    .bind(to_json(&host.cached_templates))
    .bind(host.last_report_at.as_ref().map(format_time))
    .bind(format_time(&host.created_at))
    .bind(format_time(&host.updated_at))
    .execute(connection)
    .await?;
    Ok(())
}

/// Writes what a provider reports (hardware, reachability, cached templates). `state` is the
/// reported state; draining is the operator's and kept apart.
pub async fn update_report(
    connection: &mut SqliteConnection,
    host: &Host,
    reported_state: HostState,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE hosts SET arch = ?, cpu = ?, ram_mb = ?, disk_gb = ?, hypervisor = ?, state = ?, \
            cached_templates = ?, last_report_at = ?, updated_at = ? WHERE id = ?",
    )
    .bind(host.arch.as_str())
    .bind(host.cpu)
    .bind(host.ram_mb as i64)
    .bind(host.disk_gb as i64)
    .bind(&host.hypervisor)
    .bind(reported_state.as_str())
    .bind(to_json(&host.cached_templates))
    .bind(host.last_report_at.as_ref().map(format_time))
    .bind(format_time(&host.updated_at))
    .bind(host.id.to_string())
    .execute(connection)
    .await?;
    Ok(())
}

/// Writes the operator's settings: drain flag, capacity limits and labels.
pub async fn update_settings(connection: &mut SqliteConnection, host: &Host) -> StoreResult<()> {
    sqlx::query(
        "UPDATE hosts SET draining = ?, maintenance = ?, capacity_mode = ?, usb_devices = ?, max_instances = ?, \
            vcpu_limit = ?, ram_limit_mb = ?, template_cache_mb = ?, labels = ?, updated_at = ? WHERE id = ?",
    )
    .bind(host.draining)
    .bind(host.maintenance)
    .bind(host.capacity.mode.as_str())
    .bind(usb_totals(host))
    .bind(host.capacity.max_instances)
    .bind(host.capacity.vcpu)
    .bind(host.capacity.ram_mb.map(|ram| ram as i64))
    .bind(host.capacity.template_cache_mb.map(|mib| mib as i64))
    .bind(to_json(&host.labels))
    .bind(format_time(&host.updated_at))
    .bind(host.id.to_string())
    .execute(connection)
    .await?;
    Ok(())
}

fn usb_totals(host: &Host) -> String {
    to_json(&host.usb_devices.iter().map(|(name, group)| (name.clone(), group.total)).collect::<BTreeMap<_, _>>())
}

/// Replaces the groups a host belongs to.
pub async fn set_groups(connection: &mut SqliteConnection, host_id: Uuid, groups: &[Uuid]) -> StoreResult<()> {
    sqlx::query("DELETE FROM host_groups WHERE host_id = ?")
        .bind(host_id.to_string())
        .execute(&mut *connection)
        .await?;
    for group in groups {
        sqlx::query("INSERT INTO host_groups (host_id, group_id) VALUES (?, ?)")
            .bind(host_id.to_string())
            .bind(group.to_string())
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

pub async fn update_cached_templates(connection: &mut SqliteConnection, host: &Host) -> StoreResult<()> {
    sqlx::query("UPDATE hosts SET cached_templates = ?, updated_at = ? WHERE id = ?")
        .bind(to_json(&host.cached_templates))
        .bind(format_time(&host.updated_at))
        .bind(host.id.to_string())
        .execute(connection)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, Labels};

    fn host(mode: CapacityMode, usage: Usage) -> Host {
        let now = crate::store::now();
        Host {
            id: Uuid::nil(),
            provider: "p".into(),
            name: "h".into(),
            arch: Arch::Amd64,
            cpu: 4,
            ram_mb: 4096,
            disk_gb: 100,
            hypervisor: "test".into(),
            state: HostState::Active,
            draining: false,
            capacity: Capacity { mode, max_instances: Some(2), vcpu: None, ram_mb: None, template_cache_mb: None },
            usage,
            utilization: 0.0,
            maintenance: false,
            labels: Labels::new(),
            groups: Vec::new(),
            usb_devices: BTreeMap::new(),
            cached_templates: Vec::new(),
            last_report_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn check(mode: CapacityMode, usage: Usage, draining: bool, reported: HostState, expected: HostState) {
        let mut host = host(mode, usage.clone());
        host.draining = draining;
        assert_eq!(effective_state(&host, reported), expected, "{mode:?} {usage:?} draining={draining} {reported:?}");
    }

    #[test]
    fn effective_state_follows_report_drain_and_the_unhealthy_rule() {
        let full_stuck = Usage { instances: 2, running: 0, vcpu: 4, ram_mb: 1024, disk_gb: 10 };
        let full_running = Usage { running: 1, ..full_stuck.clone() };
        let half = Usage { instances: 1, running: 0, vcpu: 1, ram_mb: 512, disk_gb: 5 };
        check(CapacityMode::Resource, full_stuck.clone(), false, HostState::Active, HostState::Unhealthy);
        check(CapacityMode::Number, full_stuck.clone(), false, HostState::Active, HostState::Unhealthy);
        check(CapacityMode::Resource, full_running, false, HostState::Active, HostState::Active);
        check(CapacityMode::Resource, half.clone(), false, HostState::Active, HostState::Active);
        check(CapacityMode::Resource, half, true, HostState::Active, HostState::Draining);
        check(CapacityMode::Resource, full_stuck.clone(), true, HostState::Active, HostState::Draining);
        check(CapacityMode::Resource, full_stuck, false, HostState::Offline, HostState::Offline);
        check(CapacityMode::Resource, Usage::default(), false, HostState::Updating, HostState::Updating);
    }

    #[test]
    fn utilization_is_the_tightest_counted_resource() {
        let usage = Usage { instances: 1, running: 1, vcpu: 3, ram_mb: 1024, disk_gb: 10 };
        assert_eq!(utilization(&host(CapacityMode::Resource, usage.clone())), 0.75);
        assert_eq!(utilization(&host(CapacityMode::Number, usage)), 0.5);
    }
}
