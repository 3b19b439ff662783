//! Environment detection (SPEC §3): which platform we run on, from a given set
//! of variables so tests never touch the process environment.

use std::fmt;

/// A detected cloud/container platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudPlatform {
    /// Google Cloud Run (`K_SERVICE` or `GOOGLE_CLOUD_PROJECT`).
    CloudRun,
    /// AWS Lambda (`AWS_LAMBDA_FUNCTION_NAME`).
    AwsLambda,
    /// AWS ECS (`ECS_CONTAINER_METADATA_URI[_V4]`).
    AwsEcs,
    /// Azure (`AZURE_CLIENT_ID` or `ACI_RESOURCE_GROUP`).
    Azure,
    /// Kubernetes (`KUBERNETES_SERVICE_HOST`).
    Kubernetes,
    /// `ENVIRONMENT` says staging/production but no platform marker is set.
    Generic,
}

impl CloudPlatform {
    /// The platform's label in logs and `/health`, e.g. `gcp-cloud-run`.
    pub fn name(self) -> &'static str {
        match self {
            CloudPlatform::CloudRun => "gcp-cloud-run",
            CloudPlatform::AwsLambda => "aws-lambda",
            CloudPlatform::AwsEcs => "aws-ecs",
            CloudPlatform::Azure => "azure",
            CloudPlatform::Kubernetes => "kubernetes",
            CloudPlatform::Generic => "generic-cloud",
        }
    }
}

/// What the process knows about where it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Environment {
    /// Built for Windows.
    pub windows: bool,
    /// The cloud or container platform detected, if any.
    pub cloud: Option<CloudPlatform>,
}

impl Environment {
    /// Detects from `get` (an env lookup) and the compile target.
    pub fn detect(get: &dyn Fn(&str) -> Option<String>) -> Environment {
        Environment {
            windows: crate::platform::IS_WINDOWS,
            cloud: detect_cloud(get),
        }
    }

    /// Whether a cloud or container platform was detected (JSON logs by
    /// default, and the cap matters most there).
    pub fn is_cloud_container(&self) -> bool {
        self.cloud.is_some()
    }

    /// A short label for logs and `/health`, e.g. `linux`, `windows`,
    /// `linux+kubernetes`.
    pub fn label(&self) -> String {
        let os = if self.windows {
            "windows"
        } else {
            crate::platform::OS_NAME
        };
        match self.cloud {
            Some(c) => format!("{os}+{}", c.name()),
            None => os.to_string(),
        }
    }
}

/// The environment as reported in `pollcap config --json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EnvironmentView {
    /// [`Environment::label`].
    pub label: String,
    /// Built for Windows.
    pub windows: bool,
    /// The platform's name ([`CloudPlatform::name`]), if any.
    pub cloud: Option<&'static str>,
    /// [`Environment::is_cloud_container`].
    pub cloud_container: bool,
}

impl Environment {
    /// The environment as `pollcap config --json` shows it.
    pub fn view(&self) -> EnvironmentView {
        EnvironmentView {
            label: self.label(),
            windows: self.windows,
            cloud: self.cloud.map(|c| c.name()),
            cloud_container: self.is_cloud_container(),
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

fn detect_cloud(get: &dyn Fn(&str) -> Option<String>) -> Option<CloudPlatform> {
    let set = |k: &str| get(k).is_some_and(|v| !v.trim().is_empty());
    if set("K_SERVICE") || set("GOOGLE_CLOUD_PROJECT") {
        return Some(CloudPlatform::CloudRun);
    }
    if set("AWS_LAMBDA_FUNCTION_NAME") {
        return Some(CloudPlatform::AwsLambda);
    }
    if set("ECS_CONTAINER_METADATA_URI") || set("ECS_CONTAINER_METADATA_URI_V4") {
        return Some(CloudPlatform::AwsEcs);
    }
    if set("AZURE_CLIENT_ID") || set("ACI_RESOURCE_GROUP") {
        return Some(CloudPlatform::Azure);
    }
    if set("KUBERNETES_SERVICE_HOST") {
        return Some(CloudPlatform::Kubernetes);
    }
    let generic = get("ENVIRONMENT").is_some_and(|v| {
        matches!(
            super::Profile::parse(&v),
            Some(super::Profile::Staging | super::Profile::Production)
        )
    });
    generic.then_some(CloudPlatform::Generic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn detect(vars: &[(&str, &str)]) -> Option<CloudPlatform> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Environment::detect(&|k| map.get(k).cloned()).cloud
    }

    #[test]
    fn each_platform_marker_is_detected() {
        assert_eq!(detect(&[]), None);
        assert_eq!(
            detect(&[("K_SERVICE", "svc")]),
            Some(CloudPlatform::CloudRun)
        );
        assert_eq!(
            detect(&[("GOOGLE_CLOUD_PROJECT", "p")]),
            Some(CloudPlatform::CloudRun)
        );
        assert_eq!(
            detect(&[("AWS_LAMBDA_FUNCTION_NAME", "f")]),
            Some(CloudPlatform::AwsLambda)
        );
        assert_eq!(
            detect(&[("ECS_CONTAINER_METADATA_URI", "http://x")]),
            Some(CloudPlatform::AwsEcs)
        );
        assert_eq!(
            detect(&[("AZURE_CLIENT_ID", "id")]),
            Some(CloudPlatform::Azure)
        );
        assert_eq!(
            detect(&[("ACI_RESOURCE_GROUP", "rg")]),
            Some(CloudPlatform::Azure)
        );
        assert_eq!(
            detect(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")]),
            Some(CloudPlatform::Kubernetes)
        );
        assert_eq!(
            detect(&[("ENVIRONMENT", "production")]),
            Some(CloudPlatform::Generic)
        );
        assert_eq!(
            detect(&[("ENVIRONMENT", "staging")]),
            Some(CloudPlatform::Generic)
        );
        assert_eq!(detect(&[("ENVIRONMENT", "testing")]), None);
        // An empty marker is not a marker.
        assert_eq!(detect(&[("K_SERVICE", "")]), None);
    }

    #[test]
    fn label_names_os_and_platform() {
        let e = Environment {
            windows: false,
            cloud: Some(CloudPlatform::Kubernetes),
        };
        assert!(e.label().ends_with("+kubernetes"));
        let w = Environment {
            windows: true,
            cloud: None,
        };
        assert_eq!(w.label(), "windows");
    }
}
