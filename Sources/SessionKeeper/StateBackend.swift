import BunqAPI
import BunqCrypto
import Foundation

/// The daemon's durable state, whichever engine holds it: the embedded SQLite file (`StateStore`, one host) or
/// PostgreSQL (`PostgresState`, several daemons on one store). Both keep the same rows with the same secrets
/// sealed the same way (`StateSealer`), so a state moves between them unchanged, and both pass one conformance
/// suite. Every write is a transaction, durable before it returns; a write for a context that does not exist
/// (removed meanwhile) is refused with `StoreError.missing`, never an upsert that brings it back.
///
/// Every call is asynchronous and has a deadline (`calls.timeout`, `state.timeout`): the engines never run on
/// Swift's cooperative threads (GRDB's own queues; postgres-nio's event loops), nothing waits synchronously, and
/// a store that does not answer costs the caller the deadline and `StoreError(.timeout)`, never a stalled daemon.
/// Serving tokens and signatures never calls the store at all.
public protocol StateBackend: Sendable {
    /// Where the state is, for messages (a path, or a PostgreSQL URL without its password).
    var location: String { get }
    /// The deadline, counts and health of every call.
    var calls: StoreCalls { get }
    /// Migrates and checks the master key; called once before anything else (a PostgreSQL store's client must be
    /// running: see `PostgresState.run`).
    func prepare() async throws
    /// Every context with its decrypted registration and session.
    func contexts() async throws -> [StoredContext]
    func context(_ name: String) async throws -> StoredContext?
    /// What start-up needs of every context, without decrypting registrations.
    func records() async throws -> [ContextRecord]
    /// Stores a context's registration, creating the context when new.
    func saveRegistration(_ name: String, kind: StoredContext.Kind, _ registration: IdentityRegistration) async throws
    /// Stores a bootstrap step's registration of an existing context (`missing` when it is gone).
    func updateRegistration(_ name: String, _ registration: IdentityRegistration) async throws
    /// Stores a new session with the registration that opened it and the new generation (`missing` when gone).
    func saveSession(_ name: String, _ session: SessionInfo, generation: Int, registration: IdentityRegistration) async throws
    /// Stores many contexts in one transaction; existing names are replaced.
    func importContexts(_ contexts: [StoredContext]) async throws
    /// Forgets a context and its secrets.
    func removeContext(_ name: String) async throws
    /// The schema migrations applied, in order.
    func appliedMigrations() async throws -> [String]
    /// Remembers an OAuth `state` issued for `redirectURI` until `expiresAt` (kept as its SHA-256 digest, never
    /// in the clear), and forgets expired ones: a state issued through one daemon completes through any other.
    func saveOAuthState(_ state: String, redirectURI: String, expiresAt: Date) async throws
    /// Consumes a state: the redirect URI it was issued for, or nil when it is unknown, used or expired. Atomic:
    /// two daemons completing one state at once get it once.
    func takeOAuthState(_ state: String, now: Date) async throws -> String?
}

/// The engines a state can live in (`state.backend`).
public enum StateBackendKind: String, Sendable {
    case sqlite
    case postgresql
}

/// Seals every secret at rest with AES-256-GCM under the master key, bound by the associated data to its context
/// and column (`NAME/registration`, `NAME/session`, `meta/key_check`): a sealed value copied to another row or
/// column does not open. Shared by every backend, so their rows are interchangeable.
public struct StateSealer: Sendable {
    let key: SymmetricKey

    public init(key: SymmetricKey) {
        self.key = key
    }

    public func seal(_ plaintext: Data, _ name: String, _ column: String) throws -> Data {
        Data(try AESGCM.seal(plaintext, using: key, authenticating: Array("\(name)/\(column)".utf8)))
    }

    public func open(_ sealed: Data, _ name: String, _ column: String) throws -> [UInt8] {
        do {
            return try AESGCM.open(sealed, using: key, authenticating: Array("\(name)/\(column)".utf8))
        } catch {
            throw StoreError(.corrupt, "the \(column) of context \(name) cannot be decrypted (wrong master key?)", cause: error)
        }
    }

    public func sealRegistration(_ registration: IdentityRegistration, _ name: String) throws -> Data {
        try seal(JSONEncoder().encode(registration), name, "registration")
    }

    public func openRegistration(_ sealed: Data, _ name: String) throws -> IdentityRegistration {
        try JSONDecoder().decode(IdentityRegistration.self, from: Data(try open(sealed, name, "registration")))
    }

    public func sealToken(_ session: SessionInfo, _ name: String) throws -> Data {
        try seal(Data(session.token.utf8), name, "session")
    }

    public func openToken(_ sealed: Data, _ name: String) throws -> String {
        String(decoding: try open(sealed, name, "session"), as: UTF8.self)
    }

    /// How a store keys an OAuth `state`.
    public static func stateDigest(_ state: String) -> String { Digest.sha256Hex(Array(state.utf8)) }

    /// The value the key check holds: sealed under the key when a state is made, so a wrong key is refused at
    /// start rather than found context by context.
    public static let keyCheckPlaintext = Data("bunq-sessiond".utf8)

    /// The error for a state sealed by another key.
    public static func wrongKey(_ source: String, _ location: String) -> StoreError {
        StoreError(.masterKey, "\(source) is not the key that sealed the state \(location): "
            + "restore the right key file (or master-key credential); the state cannot be opened with this one")
    }
}
