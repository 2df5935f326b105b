import BunqAPI
import Foundation

/// Where an identity (a context) stands, as the socket protocol reports it.
public enum ContextState: String, Sendable, Codable, CaseIterable {
    /// Registering with bunq; no session yet.
    case bootstrapping
    /// A session valid beyond the safety margin.
    case live
    /// A renewal is in flight; the current session is still valid.
    case renewing
    /// The last renewal failed; the current session is still valid; retrying with backoff.
    case retrying
    /// No valid session; still retrying.
    case expired
    /// bunq rejected the credentials (or a grant was revoked): retrying cannot help, a human must act.
    case needsAttention = "needs_attention"
    /// Removed; nothing more happens.
    case removed
}

/// A session as the keeper holds and stores it. The token is secret (sealed at rest).
public struct SessionInfo: Sendable, Equatable {
    /// bunq's session id.
    public let id: Int
    public let token: String
    public let userId: Int
    /// Our clock when the request that created it was sent (its expiry's anchor).
    public let created: Date
    public let expiresAt: Date
    /// For an OAuth user's session: the bunq user who granted access (not stored; known when it was opened).
    public var grantedByUserId: Int?

    public init(id: Int = 0, token: String, userId: Int, created: Date, expiresAt: Date, grantedByUserId: Int? = nil) {
        self.id = id
        self.token = token
        self.userId = userId
        self.created = created
        self.expiresAt = expiresAt
        self.grantedByUserId = grantedByUserId
    }
}

/// An identity's schedule, for `context.status`: what the keeper will do next and why.
public struct ContextSchedule: Sendable, Equatable {
    public var state: ContextState
    public var userId: Int?
    public var expiresAt: Date?
    public var renewAt: Date?
    public var lastRenewedAt: Date?
    public var consecutiveFailures: Int
    public var nextRetryAt: Date?
    public var lastError: String?
    /// Increases with every new session: clients can tell a rotated token.
    public var generation: Int
    /// In `needs_attention`: the stable code of what bunq rejected (`credentials_rejected`, `signature_invalid`, …).
    public var reason: String?
    /// The token rule's margin for the current session: no token is handed out this close to its expiry.
    public var margin: TimeInterval = 0
}

/// A failed renewal, as the keeper needs to see it.
public struct RenewalError: Error, Sendable, Equatable {
    public enum Kind: String, Sendable, Equatable {
        /// Network, timeout, 5xx, 429: back off and retry.
        case retryable
        /// Credentials rejected or revoked: stop, `needs_attention`, until a reload or an explicit request.
        case needsAttention = "needs_attention"
    }

    /// What went wrong, as a case: control flow switches on it; its `description` is the stable code the wire
    /// and the logs carry (the `reason` a needs-attention context reports).
    public enum Code: Sendable, Equatable, CustomStringConvertible {
        /// bunq (or the way to it) answered with this class of error: `signature_invalid`, `rate_limited`, …
        case bunq(BunqAPIError.Kind)
        /// Nothing more specific: back off and retry.
        case transient
        /// Nothing more specific, and a human must act.
        case needsAttention
        /// This daemon no longer holds the context's lease (a cluster): not a failure of the context, which
        /// another daemon now renews.
        case leaseLost
        /// The context was removed while the renewal ran.
        case removed
        /// The state store refused or failed a write the renewal needed.
        case store
        /// The state store does not answer: nothing that could not be saved is renewed.
        case storeUnreachable
        /// The identity's stored key material does not open or parse.
        case crypto
        /// bunq did not bind the device; it is registered again.
        case deviceNotBound
        /// In a cluster: the daemon holding the context did not renew it when asked.
        case holderSilent
        /// The daemon is stopping.
        case shutdown
        /// The caller stopped waiting.
        case cancelled

        public var description: String {
            switch self {
            case .bunq(let kind): kind.rawValue
            case .transient: "transient"
            case .needsAttention: "needs_attention"
            case .leaseLost: "lease_lost"
            case .removed: "removed"
            case .store: "store"
            case .storeUnreachable: "store_unreachable"
            case .crypto: "crypto"
            case .deviceNotBound: "device_not_bound"
            case .holderSilent: "holder_silent"
            case .shutdown: "shutdown"
            case .cancelled: "cancelled"
            }
        }
    }

    public let kind: Kind
    /// Human-readable, secret-free.
    public let message: String
    public let code: Code

    public init(_ kind: Kind, _ message: String, code: Code? = nil) {
        self.kind = kind
        self.message = message
        self.code = code ?? (kind == .needsAttention ? .needsAttention : .transient)
    }

    static func lostLease(_ name: String) -> RenewalError {
        RenewalError(.retryable, "this daemon no longer holds the lease of \(name)", code: .leaseLost)
    }

    /// A session-server window was full (bunq's 429, or the egress group's shared slot): it is pushed back.
    public var isRateLimited: Bool { code == .bunq(.rateLimited) }
}

/// The answer to "give me the token of this context": the token only when it is valid beyond the safety margin.
public enum TokenGrant: Sendable, Equatable {
    case granted(token: String, userId: Int, expiresAt: Date, renewAt: Date?, generation: Int)
    /// No usable token now: the state, and when to ask again (nil: not by waiting, a human must act).
    case unavailable(state: ContextState, retryAt: Date?, reason: String?)
}
