import Foundation

/// The results of the socket protocol's methods, as the daemon writes them and clients read them (DESIGN.md,
/// "The socket protocol"). Timestamps are RFC 3339 UTC with milliseconds. A field that may be unknown is written
/// as `null`, never left out (`expires_at` before the first session); a part only some callers get
/// (`daemon.status.state`, for admins) or only some states have (`will_run_late`) is left out for the others.
///
public enum RPCResult {
    /// `session.get` as clients read it (the daemon writes it from a pre-encoded snapshot, fields in this order).
    public struct Session: Codable, Sendable, Equatable {
        public let context: String
        /// Secret.
        public let token: String
        public let userId: Int
        public let expiresAt: Date
        public let renewAt: Date?
        public let generation: Int
        /// bunq's server key for verifying its replies, PEM; nil until known.
        public let serverPublicKey: String?

        public init(context: String, token: String, userId: Int, expiresAt: Date, renewAt: Date?, generation: Int,
                    serverPublicKey: String?) {
            self.context = context
            self.token = token
            self.userId = userId
            self.expiresAt = expiresAt
            self.renewAt = renewAt
            self.generation = generation
            self.serverPublicKey = serverPublicKey
        }

        enum CodingKeys: String, CodingKey {
            case context, token, userId = "user_id", expiresAt = "expires_at", renewAt = "renew_at", generation
            case serverPublicKey = "server_public_key"
        }

        public func encode(to encoder: any Encoder) throws {
            var fields = encoder.container(keyedBy: CodingKeys.self)
            try fields.encode(context, forKey: .context)
            try fields.encode(token, forKey: .token)
            try fields.encode(userId, forKey: .userId)
            try fields.encode(expiresAt, forKey: .expiresAt)
            try fields.encode(renewAt, forKey: .renewAt)
            try fields.encode(generation, forKey: .generation)
            try fields.encode(serverPublicKey, forKey: .serverPublicKey)
        }
    }

    /// `request.sign`.
    public struct Signature: Codable, Sendable, Equatable {
        public let signature: String
        public init(signature: String) { self.signature = signature }
    }

    /// `session.renew`: the session now live, and whether this call renewed it (false: a recent renewal's).
    public struct Renewal: Codable, Sendable, Equatable {
        public let generation: Int
        public let expiresAt: Date
        public let renewed: Bool
        public init(generation: Int, expiresAt: Date, renewed: Bool) {
            self.generation = generation
            self.expiresAt = expiresAt
            self.renewed = renewed
        }
        enum CodingKeys: String, CodingKey { case generation, expiresAt = "expires_at", renewed }
    }

    /// `session.report_invalid`: the session that replaced the reported one.
    public struct Replacement: Codable, Sendable, Equatable {
        public let generation: Int
        public let expiresAt: Date
        public init(generation: Int, expiresAt: Date) {
            self.generation = generation
            self.expiresAt = expiresAt
        }
        enum CodingKeys: String, CodingKey { case generation, expiresAt = "expires_at" }
    }

    /// `session.subscribe`.
    public struct Subscribed: Codable, Sendable, Equatable {
        public let subscribed: [String]
        public init(subscribed: [String]) { self.subscribed = subscribed }
    }

    /// `context.list`.
    public struct ContextList: Codable, Sendable, Equatable {
        public let contexts: [ContextSummary]
        public init(contexts: [ContextSummary]) { self.contexts = contexts }
    }

    /// One entry of `context.list`.
    public struct ContextSummary: Codable, Sendable, Equatable {
        public let name: String
        /// `provider`, `api_key`, `oauth`, or `unknown`.
        public let kind: String
        public let state: String
        public let userId: Int?
        public let expiresAt: Date?
        public let renewAt: Date?

        public init(name: String, kind: String, state: String, userId: Int?, expiresAt: Date?, renewAt: Date?) {
            self.name = name
            self.kind = kind
            self.state = state
            self.userId = userId
            self.expiresAt = expiresAt
            self.renewAt = renewAt
        }

        enum CodingKeys: String, CodingKey {
            case name, kind, state, userId = "user_id", expiresAt = "expires_at", renewAt = "renew_at"
        }

        public func encode(to encoder: any Encoder) throws {
            var fields = encoder.container(keyedBy: CodingKeys.self)
            try fields.encode(name, forKey: .name)
            try fields.encode(kind, forKey: .kind)
            try fields.encode(state, forKey: .state)
            try fields.encode(userId, forKey: .userId)
            try fields.encode(expiresAt, forKey: .expiresAt)
            try fields.encode(renewAt, forKey: .renewAt)
        }
    }

    /// `context.status`.
    public struct ContextStatus: Codable, Sendable, Equatable {
        public let context: String
        public let kind: String
        public let state: String
        public let userId: Int?
        public let generation: Int
        public let expiresAt: Date?
        public let renewAt: Date?
        public let lastRenewedAt: Date?
        public let consecutiveFailures: Int
        public let nextRetryAt: Date?
        public let lastError: String?
        /// Why a context needs attention (`needs_attention`), in bunq's or our words.
        public let reason: String?

        public init(context: String, kind: String, state: String, userId: Int?, generation: Int, expiresAt: Date?,
                    renewAt: Date?, lastRenewedAt: Date?, consecutiveFailures: Int, nextRetryAt: Date?,
                    lastError: String?, reason: String?) {
            self.context = context
            self.kind = kind
            self.state = state
            self.userId = userId
            self.generation = generation
            self.expiresAt = expiresAt
            self.renewAt = renewAt
            self.lastRenewedAt = lastRenewedAt
            self.consecutiveFailures = consecutiveFailures
            self.nextRetryAt = nextRetryAt
            self.lastError = lastError
            self.reason = reason
        }

        enum CodingKeys: String, CodingKey {
            case context, kind, state, userId = "user_id", generation, expiresAt = "expires_at", renewAt = "renew_at"
            case lastRenewedAt = "last_renewed_at", consecutiveFailures = "consecutive_failures"
            case nextRetryAt = "next_retry_at", lastError = "last_error", reason
        }

        public func encode(to encoder: any Encoder) throws {
            var fields = encoder.container(keyedBy: CodingKeys.self)
            try fields.encode(context, forKey: .context)
            try fields.encode(kind, forKey: .kind)
            try fields.encode(state, forKey: .state)
            try fields.encode(userId, forKey: .userId)
            try fields.encode(generation, forKey: .generation)
            try fields.encode(expiresAt, forKey: .expiresAt)
            try fields.encode(renewAt, forKey: .renewAt)
            try fields.encode(lastRenewedAt, forKey: .lastRenewedAt)
            try fields.encode(consecutiveFailures, forKey: .consecutiveFailures)
            try fields.encode(nextRetryAt, forKey: .nextRetryAt)
            try fields.encode(lastError, forKey: .lastError)
            try fields.encode(reason, forKey: .reason)
        }
    }

    /// `oauth.authorize_url`.
    public struct AuthorizeURL: Codable, Sendable, Equatable {
        public let url: String
        public let state: String
        public let expiresAt: Date
        public init(url: String, state: String, expiresAt: Date) {
            self.url = url
            self.state = state
            self.expiresAt = expiresAt
        }
        enum CodingKeys: String, CodingKey { case url, state, expiresAt = "expires_at" }
    }

    /// `oauth.complete`: the new user's context.
    public struct Connected: Codable, Sendable, Equatable {
        public let context: String
        public init(context: String) { self.context = context }
    }

    /// `daemon.status`.
    public struct DaemonStatus: Codable, Sendable, Equatable {
        public let version: String
        public let uptimeSeconds: Int
        public let ready: Bool
        /// The stored state is not restored yet.
        public let starting: Bool
        /// Contexts by state (`live`, `retrying`, …) and `total`: every context for an admin, else those the
        /// caller may see.
        public let contexts: [String: Int]
        public let nextRenewalAt: Date?
        public let budget: Budget
        /// With a cluster only.
        public let cluster: Cluster?
        public let store: Store
        /// For admins only.
        public let state: StateLocation?

        public init(version: String, uptimeSeconds: Int, ready: Bool, starting: Bool, contexts: [String: Int],
                    nextRenewalAt: Date?, budget: Budget, cluster: Cluster?, store: Store, state: StateLocation?) {
            self.version = version
            self.uptimeSeconds = uptimeSeconds
            self.ready = ready
            self.starting = starting
            self.contexts = contexts
            self.nextRenewalAt = nextRenewalAt
            self.budget = budget
            self.cluster = cluster
            self.store = store
            self.state = state
        }

        enum CodingKeys: String, CodingKey {
            case version, uptimeSeconds = "uptime_seconds", ready, starting, contexts, nextRenewalAt = "next_renewal_at"
            case budget, cluster, store, state
        }

        public func encode(to encoder: any Encoder) throws {
            var fields = encoder.container(keyedBy: CodingKeys.self)
            try fields.encode(version, forKey: .version)
            try fields.encode(uptimeSeconds, forKey: .uptimeSeconds)
            try fields.encode(ready, forKey: .ready)
            try fields.encode(starting, forKey: .starting)
            try fields.encode(contexts, forKey: .contexts)
            try fields.encode(nextRenewalAt, forKey: .nextRenewalAt)
            try fields.encode(budget, forKey: .budget)
            try fields.encodeIfPresent(cluster, forKey: .cluster)
            try fields.encode(store, forKey: .store)
            try fields.encodeIfPresent(state, forKey: .state)
        }

        public struct Budget: Codable, Sendable, Equatable {
            public let sessionServer: SessionServerBudget
            public init(sessionServer: SessionServerBudget) { self.sessionServer = sessionServer }
            enum CodingKeys: String, CodingKey { case sessionServer = "session_server" }
        }

        /// Demand and supply of session-server calls, as last checked (every 10 s).
        public struct SessionServerBudget: Codable, Sendable, Equatable {
            public let neededPerDay: Double
            /// Nil (null): unlimited.
            public let availablePerDay: Double?
            public let utilisation: Double
            /// How many identities will run late; only above 100%.
            public let willRunLate: Int?

            public init(neededPerDay: Double, availablePerDay: Double?, utilisation: Double, willRunLate: Int?) {
                self.neededPerDay = neededPerDay
                self.availablePerDay = availablePerDay
                self.utilisation = utilisation
                self.willRunLate = willRunLate
            }

            enum CodingKeys: String, CodingKey {
                case neededPerDay = "needed_per_day", availablePerDay = "available_per_day", utilisation
                case willRunLate = "will_run_late"
            }

            public func encode(to encoder: any Encoder) throws {
                var fields = encoder.container(keyedBy: CodingKeys.self)
                try fields.encode(neededPerDay, forKey: .neededPerDay)
                try fields.encode(availablePerDay, forKey: .availablePerDay)
                try fields.encode(utilisation, forKey: .utilisation)
                try fields.encodeIfPresent(willRunLate, forKey: .willRunLate)
            }
        }

        /// This daemon, its leases and the members the last lease round saw.
        public struct Cluster: Codable, Sendable, Equatable {
            public let instance: String
            public let egressGroup: String
            public let leasesHeld: Int
            public let storeReachable: Bool
            public let members: [Member]

            public init(instance: String, egressGroup: String, leasesHeld: Int, storeReachable: Bool, members: [Member]) {
                self.instance = instance
                self.egressGroup = egressGroup
                self.leasesHeld = leasesHeld
                self.storeReachable = storeReachable
                self.members = members
            }

            enum CodingKeys: String, CodingKey {
                case instance, egressGroup = "egress_group", leasesHeld = "leases_held", storeReachable = "store_reachable"
                case members
            }

            public struct Member: Codable, Sendable, Equatable {
                public let instance: String
                public let egressGroup: String
                public let leases: Int
                public init(instance: String, egressGroup: String, leases: Int) {
                    self.instance = instance
                    self.egressGroup = egressGroup
                    self.leases = leases
                }
                enum CodingKeys: String, CodingKey { case instance, egressGroup = "egress_group", leases }
            }
        }

        /// The store's health: tokens and signatures are served from memory whatever it says.
        public struct Store: Codable, Sendable, Equatable {
            public let backend: String
            public let reachable: Bool
            public let failingSince: Date?
            public let consecutiveFailures: Int

            public init(backend: String, reachable: Bool, failingSince: Date?, consecutiveFailures: Int) {
                self.backend = backend
                self.reachable = reachable
                self.failingSince = failingSince
                self.consecutiveFailures = consecutiveFailures
            }

            enum CodingKeys: String, CodingKey {
                case backend, reachable, failingSince = "failing_since", consecutiveFailures = "consecutive_failures"
            }

            public func encode(to encoder: any Encoder) throws {
                var fields = encoder.container(keyedBy: CodingKeys.self)
                try fields.encode(backend, forKey: .backend)
                try fields.encode(reachable, forKey: .reachable)
                try fields.encode(failingSince, forKey: .failingSince)
                try fields.encode(consecutiveFailures, forKey: .consecutiveFailures)
            }
        }

        /// Where the state is and what the store last said (`bunq-sessionctl backup` copies it from there).
        public struct StateLocation: Codable, Sendable, Equatable {
            public let backend: String
            public let directory: String
            public let lastError: String?

            public init(backend: String, directory: String, lastError: String?) {
                self.backend = backend
                self.directory = directory
                self.lastError = lastError
            }

            enum CodingKeys: String, CodingKey { case backend, directory, lastError = "last_error" }

            public func encode(to encoder: any Encoder) throws {
                var fields = encoder.container(keyedBy: CodingKeys.self)
                try fields.encode(backend, forKey: .backend)
                try fields.encode(directory, forKey: .directory)
                try fields.encode(lastError, forKey: .lastError)
            }
        }
    }
}

/// The params of the daemon's notifications to subscribers.
public enum RPCNotification {
    /// `session.rotated`: a context's new session.
    public struct Rotated: Codable, Sendable, Equatable {
        public let context: String
        public let generation: Int
        public let token: String
        public let expiresAt: Date
        public init(context: String, generation: Int, token: String, expiresAt: Date) {
            self.context = context
            self.generation = generation
            self.token = token
            self.expiresAt = expiresAt
        }
        enum CodingKeys: String, CodingKey { case context, generation, token, expiresAt = "expires_at" }
    }

    /// `context.state`: a context failed, needs attention, or is no longer the subscriber's (`forbidden`).
    public struct StateChanged: Codable, Sendable, Equatable {
        public let context: String
        public let state: String
        public let reason: String
        public init(context: String, state: String, reason: String) {
            self.context = context
            self.state = state
            self.reason = reason
        }
    }
}

/// The protocol's JSON as Codable types read and write it: compact, keys sorted, slashes unescaped, timestamps
/// RFC 3339 UTC with milliseconds. The same bytes as Foundation's `JSONSerialization` with those options wrote for the
/// same values before these types existed (RPCResultTests holds them to it).
public enum RPCJSON {
    public static func encode(_ value: some Encodable) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(JSONText.timestamp(date))
        }
        guard let data = try? encoder.encode(value) else { return "null" }
        return String(decoding: data, as: UTF8.self)
    }

    public static func decode<Value: Decodable>(_ type: Value.Type, from data: Data) throws -> Value {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let container = try decoder.singleValueContainer()
            let text = try container.decode(String.self)
            guard let date = JSONText.date(text) else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "not an RFC 3339 timestamp: \(text)")
            }
            return date
        }
        return try decoder.decode(type, from: data)
    }
}
