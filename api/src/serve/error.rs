//! Typed API errors and how they reach the client: a status and Docker's
//! `{"message": "..."}` body, with Docker's wording where clients match it
//! (docker-py looks for `No such container` and `No such image`).

use hyper::StatusCode;

use crate::container::create::CreateError;
use crate::container::ipc::IpcError;
use crate::container::ContainerError;
use crate::storage::volume::VolumeError;

/// A request that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No route for the method and path.
    #[error("page not found")]
    NoRoute,
    /// The client's API version is newer than husk's.
    #[error("client version {0} is too new. Maximum supported API version is {max}", max = super::API_VERSION)]
    VersionTooNew(String),
    /// The client's API version is older than husk's minimum.
    #[error("client version {0} is too old. Minimum supported API version is {min}, please upgrade your client to a newer version", min = super::MIN_API_VERSION)]
    VersionTooOld(String),
    /// No container with that name or id.
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    /// No image with that name or id.
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// No exec instance with that id.
    #[error("No such exec instance: {0}")]
    NoSuchExec(String),
    /// No volume with that name.
    #[error("get {0}: no such volume")]
    NoSuchVolume(String),
    /// Something else asked for is not there (a path in a container).
    #[error("{0}")]
    NotFound(String),
    /// Not allowed (a built-in network, a network in use).
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with the object's state or another object.
    #[error("{0}")]
    Conflict(String),
    /// A malformed or invalid request.
    #[error("{0}")]
    BadParameter(String),
    /// Something husk cannot do (yet): said, never silently ignored.
    #[error("{0}")]
    Unsupported(String),
    /// Nothing to do (already started, already stopped).
    #[error("not modified")]
    NotModified,
    /// husk itself failed.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NoRoute
            | ApiError::NoSuchContainer(_)
            | ApiError::NoSuchImage(_)
            | ApiError::NoSuchExec(_)
            | ApiError::NoSuchVolume(_)
            | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::VersionTooNew(_)
            | ApiError::VersionTooOld(_)
            | ApiError::BadParameter(_)
            | ApiError::Unsupported(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotModified => StatusCode::NOT_MODIFIED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Docker's error body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "message": self.to_string() })
    }

    /// An internal error with the whole cause chain on one line.
    pub fn internal(e: &(dyn std::error::Error + 'static)) -> ApiError {
        ApiError::Internal(crate::error::chain(e))
    }
}

impl From<ContainerError> for ApiError {
    fn from(e: ContainerError) -> Self {
        match e {
            ContainerError::NotFound(name) => ApiError::NoSuchContainer(name),
            ContainerError::Ambiguous(_) => ApiError::NoSuchContainer(e.to_string()),
            ContainerError::NameInUse { .. } => ApiError::Conflict(e.to_string()),
            ContainerError::BadName(_) => ApiError::BadParameter(e.to_string()),
            e => ApiError::internal(&e),
        }
    }
}

impl From<CreateError> for ApiError {
    fn from(e: CreateError) -> Self {
        match e {
            CreateError::Container(c) => c.into(),
            CreateError::ImageConfig { .. } | CreateError::NoName => ApiError::internal(&e),
            e => ApiError::BadParameter(crate::error::chain(&e)),
        }
    }
}

impl From<IpcError> for ApiError {
    fn from(e: IpcError) -> Self {
        match &e {
            IpcError::NotRunning { id } => {
                ApiError::Conflict(format!("Container {id} is not running"))
            }
            // Refusals with a command status (126, 127) are the user's.
            IpcError::Refused { status, .. } if *status != 125 => {
                ApiError::BadParameter(e.to_string())
            }
            _ => ApiError::internal(&e),
        }
    }
}

impl From<VolumeError> for ApiError {
    fn from(e: VolumeError) -> Self {
        match &e {
            VolumeError::NoSuchVolume(name) => ApiError::NoSuchVolume(name.clone()),
            VolumeError::InUse { name, holder } | VolumeError::Locked { name, holder } => {
                ApiError::Conflict(format!("remove {name}: volume is in use - [{holder}]"))
            }
            VolumeError::InvalidName(_) | VolumeError::InvalidSize(_) => {
                ApiError::BadParameter(e.to_string())
            }
            _ => ApiError::internal(&e),
        }
    }
}

impl From<crate::image::store::StoreError> for ApiError {
    fn from(e: crate::image::store::StoreError) -> Self {
        ApiError::internal(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_messages() {
        let e: ApiError = ContainerError::NotFound("web".into()).into();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.body()["message"], "No such container: web");
        let e: ApiError = ContainerError::NameInUse {
            name: "web".into(),
            id: "ab".into(),
        }
        .into();
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert!(e
            .to_string()
            .starts_with("Conflict. The container name \"/web\""));
        let e: ApiError = CreateError::NoCommand.into();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = ApiError::VersionTooNew("1.99".into());
        assert_eq!(
            e.to_string(),
            "client version 1.99 is too new. Maximum supported API version is 1.41"
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            ApiError::NoSuchImage("x".into()).to_string(),
            "No such image: x"
        );
        let e: ApiError = VolumeError::InUse {
            name: "data".into(),
            holder: "ab".into(),
        }
        .into();
        assert_eq!(e.status(), StatusCode::CONFLICT);
        let e: ApiError = IpcError::NotRunning { id: "ab".into() }.into();
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert_eq!(e.to_string(), "Container ab is not running");
        let e = ApiError::NoSuchExec("e1".into());
        assert_eq!(
            (e.status(), e.to_string()),
            (StatusCode::NOT_FOUND, "No such exec instance: e1".into())
        );
        let e: ApiError = VolumeError::NoSuchVolume("v".into()).into();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }
}
