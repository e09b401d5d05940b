//! Users, groups, roles, keys and sessions through the service, and the credential checks the
//! auth plugins call.

use std::time::Duration;

use super::{Fixture, start};
use crate::auth::identity::DEFAULT_PROJECT_ID;
use crate::auth::permissions::Resource;
use crate::auth::{AdminToken, Caller, CredentialError, Principal, PrincipalKind};
use crate::service::{ApiKeyPatch, NewApiKey, NewRole, NewRoleBinding, NewUser, NewUserGroup, ServiceError, UserPatch};

async fn fixture() -> Fixture {
    start(serde_json::json!({ "hosts": 1 })).await
}

fn new_user(name: &str, password: &str, groups: &[&str]) -> NewUser {
    NewUser {
        name: name.into(),
        password: Some(password.into()),
        display_name: String::new(),
        email: String::new(),
        groups: groups.iter().map(|group| (*group).to_owned()).collect(),
    }
}

async fn caller_of(fixture: &Fixture, principal: Principal) -> Caller {
    fixture.service.caller(principal, "test", "192.0.2.1:5000").await.expect("caller")
}

#[tokio::test]
async fn passwords_sessions_and_keys_are_checked_by_the_host() {
    let fixture = fixture().await;
    let service = &fixture.service;
    let admin = Caller::admin("test", "192.0.2.1:5000");
    let credentials = service.credentials(AdminToken::new("the-admin-token"));
    service
        .create_user_group(&admin, NewUserGroup { name: "ci".into(), description: String::new() })
        .await
        .expect("group");
    let alice = service.create_user(&admin, new_user("alice", "correct horse", &["ci"])).await.expect("user");
    assert_eq!(alice.groups, vec!["ci".to_owned()]);
    assert!(alice.has_password);

    // Passwords.
    let principal = credentials.verify_password("alice", "correct horse", "192.0.2.1:1").await.expect("password");
    assert_eq!(principal.name, "alice");
    let wrong = credentials.verify_password("alice", "wrong horse", "192.0.2.1:1").await;
    assert_eq!(wrong, Err(CredentialError::Rejected("wrong user name or password".into())));
    let unknown = credentials.verify_password("bob", "whatever1", "192.0.2.1:1").await;
    assert_eq!(unknown, Err(CredentialError::Rejected("wrong user name or password".into())));
    assert_eq!(credentials.verify_token("the-admin-token", "").await, Ok(Principal::admin()));

    // Sessions: a login gives a token that verifies until logout.
    let started = service.login("alice", "correct horse", "192.0.2.1:2").await.expect("login");
    assert!(started.token.starts_with("hps_"));
    let (events, _) = service.events_after(&admin, 0, 1000).await.expect("events");
    let event = events.iter().find(|event| event.kind == "session.started").expect("recorded");
    assert_eq!(
        (event.actor.as_str(), event.source.as_str(), event.outcome.as_str()),
        ("alice", "192.0.2.1:2", "succeeded")
    );
    let by_session = credentials.verify_session(&started.token, "").await.expect("session");
    assert!(matches!(by_session.kind, PrincipalKind::User { session_id: Some(id), .. } if id == started.session.id));
    assert_eq!(credentials.verify_token(&started.token, "").await.map(|principal| principal.name), Ok("alice".into()));
    let alice_caller = caller_of(&fixture, by_session).await;
    assert_eq!(service.list_sessions(&alice_caller).await.expect("own sessions").len(), 1);
    service.end_session(&alice_caller, None).await.expect("logout");
    assert!(matches!(credentials.verify_session(&started.token, "").await, Err(CredentialError::Rejected(_))));

    // Keys: the token works at once, and stops at once when revoked.
    let alice_caller = caller_of(&fixture, principal.clone()).await;
    let created = service
        .create_api_key(
            &alice_caller,
            NewApiKey {
                id: "ci-runner".into(),
                ttl: Some(3600),
                groups: vec!["ci".into()],
                description: String::new(),
                user: None,
            },
        )
        .await
        .expect("key");
    let (id, secret) = created.token.split_once(':').expect("id:secret");
    assert_eq!(id, "ci-runner");
    let by_key = credentials.verify_api_key(id, secret, "").await.expect("key verifies");
    assert_eq!(by_key.name, "alice/ci-runner");
    assert_eq!(credentials.verify_token(&created.token, "").await, Ok(by_key));
    assert!(matches!(credentials.verify_api_key(id, "not-the-secret", "").await, Err(CredentialError::Rejected(_))));
    let refused = service
        .create_api_key(
            &alice_caller,
            NewApiKey {
                id: "other".into(),
                ttl: None,
                groups: vec!["ops".into()],
                description: String::new(),
                user: None,
            },
        )
        .await;
    assert!(
        matches!(&refused, Err(ServiceError::Invalid(message)) if message.contains("not in user group 'ops'")),
        "{refused:?}"
    );
    service.revoke_api_key(&alice_caller, "ci-runner").await.expect("revoke");
    let revoked = credentials.verify_api_key(id, secret, "").await;
    assert_eq!(revoked, Err(CredentialError::Rejected("API key 'ci-runner' is revoked".into())));
    let listed = service.list_api_keys(&alice_caller).await.expect("own keys");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked_at.is_some());
    let serialized = serde_json::to_string(&listed[0]).expect("serializes");
    assert!(!serialized.contains("secret") && !serialized.contains(&listed[0].secret_hash), "{serialized}");

    // A disabled user's password and sessions stop working.
    let again = service.login("alice", "correct horse", "192.0.2.1:2").await.expect("login");
    service
        .update_user(&admin, "alice", UserPatch { disabled: Some(true), ..Default::default() })
        .await
        .expect("disable");
    assert!(matches!(credentials.verify_session(&again.token, "").await, Err(CredentialError::Rejected(_))));
    let disabled = credentials.verify_password("alice", "correct horse", "192.0.2.1:1").await;
    assert_eq!(disabled, Err(CredentialError::Rejected("user 'alice' is disabled".into())));
}

#[tokio::test]
async fn failed_passwords_are_throttled_per_user() {
    let fixture = fixture().await;
    let admin = Caller::admin("test", "");
    fixture.service.create_user(&admin, new_user("carol", "long enough", &[])).await.expect("user");
    let credentials = fixture.service.credentials(AdminToken::new("t"));
    for attempt in 0..5 {
        let source = format!("198.51.100.{attempt}:1");
        assert!(matches!(
            credentials.verify_password("carol", "bad guess", &source).await,
            Err(CredentialError::Rejected(_))
        ));
    }
    // Even the right password waits now, from any address.
    let throttled = credentials.verify_password("carol", "long enough", "203.0.113.9:1").await;
    assert!(
        matches!(throttled, Err(CredentialError::Throttled(wait)) if wait > Duration::from_secs(60)),
        "{throttled:?}"
    );
    let login = fixture.service.login("carol", "long enough", "203.0.113.9:1").await;
    assert!(matches!(login, Err(ServiceError::Throttled(_))), "{login:?}");
}

#[tokio::test]
async fn roles_grant_permissions_per_project_and_refusals_are_audited() {
    let fixture = fixture().await;
    let service = &fixture.service;
    let admin = Caller::admin("test", "");
    service.create_user(&admin, new_user("dave", "long enough", &[])).await.expect("user");
    let credentials = service.credentials(AdminToken::new("t"));
    let dave = credentials.verify_password("dave", "long enough", "").await.expect("dave");

    // No grants: nothing but his own things.
    let nobody = caller_of(&fixture, dave.clone()).await;
    let refused = service.list_users(&nobody).await;
    assert!(matches!(&refused, Err(ServiceError::Forbidden(message)) if message.contains("user:list")), "{refused:?}");
    assert_eq!(service.get_user(&nobody, "dave").await.expect("himself").name, "dave");

    let role = service
        .create_role(
            &admin,
            NewRole {
                name: "auditor".into(),
                description: String::new(),
                permissions: vec!["user:list".into(), "event:*".into()],
            },
        )
        .await
        .expect("role");
    assert_eq!(role.permissions, vec!["event:list".to_owned(), "user:list".to_owned()]);
    let bad = service
        .create_role(
            &admin,
            NewRole { name: "bad".into(), description: String::new(), permissions: vec!["user:fly".into()] },
        )
        .await;
    assert!(matches!(&bad, Err(ServiceError::Invalid(message)) if message.contains("unknown action 'fly'")), "{bad:?}");
    service
        .grant_role(
            &admin,
            NewRoleBinding {
                role: "auditor".into(),
                user: Some("dave".into()),
                group: None,
                project: None,
                resource_ids: None,
            },
        )
        .await
        .expect("grant");
    service
        .grant_role(
            &admin,
            NewRoleBinding {
                role: "member".into(),
                user: Some("dave".into()),
                group: None,
                project: Some("default".into()),
                resource_ids: None,
            },
        )
        .await
        .expect("grant in project");
    let auditor = caller_of(&fixture, dave).await;
    assert_eq!(service.list_users(&auditor).await.expect("may list").len(), 1);
    let create = crate::auth::access::permission(Resource::Instance, "create");
    assert!(auditor.access.allows(create, Some(DEFAULT_PROJECT_ID), None));
    assert!(!auditor.access.allows(create, Some(uuid::Uuid::from_u128(99)), None));
    assert!(matches!(service.delete_role(&admin, "member").await, Err(ServiceError::Conflict(_))), "built-in");

    let (events, _) = service.events_after(&Caller::system(), 0, 1000).await.expect("events");
    let denied: Vec<_> = events.iter().filter(|event| event.kind == "audit.denied").collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(
        (denied[0].actor.as_str(), denied[0].outcome.as_str(), denied[0].scheme.as_str()),
        ("dave", "denied", "test")
    );
    let granted = events.iter().find(|event| event.kind == "role.granted").expect("grant recorded");
    assert_eq!((granted.actor.as_str(), granted.outcome.as_str()), ("admin", "succeeded"));
}

#[tokio::test]
async fn key_patches_and_expiry() {
    let fixture = fixture().await;
    let service = &fixture.service;
    let admin = Caller::admin("test", "");
    service.create_user(&admin, new_user("erin", "long enough", &[])).await.expect("user");
    let created = service
        .create_api_key(
            &admin,
            NewApiKey {
                id: "erin-key".into(),
                ttl: Some(1),
                groups: Vec::new(),
                description: String::new(),
                user: Some("erin".into()),
            },
        )
        .await
        .expect("key for erin");
    assert_eq!(created.key.user, "erin");
    let credentials = service.credentials(AdminToken::new("t"));
    let (id, secret) = created.token.split_once(':').expect("id:secret");
    assert!(credentials.verify_api_key(id, secret, "").await.is_ok());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        credentials.verify_api_key(id, secret, "").await,
        Err(CredentialError::Rejected("API key 'erin-key' has expired".into()))
    );
    service.update_api_key(&admin, id, ApiKeyPatch { ttl: Some(60), ..Default::default() }).await.expect("extend");
    assert!(credentials.verify_api_key(id, secret, "").await.is_ok());
    let bad_ttl = service.update_api_key(&admin, id, ApiKeyPatch { ttl: Some(0), ..Default::default() }).await;
    assert!(matches!(&bad_ttl, Err(ServiceError::Invalid(message)) if message.contains("ttl")), "{bad_ttl:?}");
    let duplicate = service
        .create_api_key(
            &admin,
            NewApiKey {
                id: "erin-key".into(),
                ttl: None,
                groups: Vec::new(),
                description: String::new(),
                user: Some("erin".into()),
            },
        )
        .await;
    assert!(matches!(duplicate, Err(ServiceError::Conflict(_))));
}

#[tokio::test]
async fn sessions_end_when_idle_and_at_their_hard_end() {
    let fixture = super::start_with_settings(serde_json::json!({ "hosts": 1 }), |settings| {
        settings.session_idle_timeout = Duration::from_millis(600);
        settings.session_max_lifetime = Duration::from_millis(1500);
    })
    .await;
    let service = &fixture.service;
    let admin = Caller::admin("test", "");
    service.create_user(&admin, new_user("gwen", "long enough", &[])).await.expect("user");
    let credentials = service.credentials(AdminToken::new("t"));

    // Unused for longer than the idle timeout: ended.
    let idle = service.login("gwen", "long enough", "").await.expect("login");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let ended = credentials.verify_session(&idle.token, "").await;
    assert_eq!(ended, Err(CredentialError::Rejected("the session has ended; log in again".into())));

    // Used every 400 ms it lives on past the idle timeout, but not past its hard end.
    let busy = service.login("gwen", "long enough", "").await.expect("login");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(credentials.verify_session(&busy.token, "").await.is_ok(), "kept alive by use");
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(credentials.verify_session(&busy.token, "").await, Err(CredentialError::Rejected(_))), "hard end");
}
