//! authorization.k8s.io reviews (`kubectl auth can-i`): answered, never stored. Whoever holds
//! the token is cluster-admin here (no RBAC), so every access is allowed.

use serde_json::{Value, json};

use crate::error::ApiError;

/// Why every review is allowed.
const REASON: &str = "the API server of pier up has no RBAC: its token is cluster-admin";

/// The reviews served, by kind (their plurals, `selfsubjectaccessreviews`, ...).
pub const KINDS: &[(&str, &str)] = &[
    ("selfsubjectaccessreviews", "SelfSubjectAccessReview"),
    ("selfsubjectrulesreviews", "SelfSubjectRulesReview"),
];

/// The API group of the reviews.
pub const GROUP: &str = "authorization.k8s.io";

/// The answered review: the request with its `status` filled in.
pub fn answer(kind: &str, mut review: Value) -> Result<Value, ApiError> {
    let Some(obj) = review.as_object_mut() else {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    };
    if !obj.get("spec").is_some_and(Value::is_object) {
        return Err(ApiError::BadRequest(format!("a {kind} needs a spec")));
    }
    let status = match kind {
        "SelfSubjectAccessReview" => json!({"allowed": true, "reason": REASON}),
        "SelfSubjectRulesReview" => json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
        }),
        other => {
            return Err(ApiError::BadRequest(format!("{other} is not a review")));
        }
    };
    obj.insert("apiVersion".into(), json!(format!("{GROUP}/v1")));
    obj.insert("kind".into(), json!(kind));
    obj.insert("status".into(), status);
    Ok(review)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_is_allowed_and_rules_are_everything() {
        let review =
            json!({"spec": {"resourceAttributes": {"verb": "create", "resource": "pods"}}});
        let answered = answer("SelfSubjectAccessReview", review).expect("answered");
        assert_eq!(answered["status"]["allowed"], true);
        assert_eq!(answered["spec"]["resourceAttributes"]["verb"], "create");
        assert_eq!(answered["apiVersion"], "authorization.k8s.io/v1");
        let rules = answer(
            "SelfSubjectRulesReview",
            json!({"spec": {"namespace": "default"}}),
        )
        .expect("answered");
        assert_eq!(rules["status"]["resourceRules"][0]["verbs"][0], "*");
        assert!(answer("SelfSubjectAccessReview", json!({})).is_err());
        assert!(answer("SelfSubjectAccessReview", json!([1])).is_err());
    }
}
