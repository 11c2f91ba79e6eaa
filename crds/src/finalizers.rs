//! The finalizers Pier puts on its objects. The node's goes first on deletion: the operator
//! releases an address or host port only once no node uses it any more.

/// The operator's: holds a deletion until the object's allocations are released.
pub const OPERATOR: &str = "pier.dev/operator";

/// The node agent's (on Endpoints and PortPublishes of its node): holds a deletion until the
/// object's kernel objects are gone from the node.
pub const NODE: &str = "pier.dev/node";
