import BunqAPI
import Foundation
@testable import SessionKeeper
import Synchronization
import TestSupport
import TestThreads
import Testing

/// A store whose registration writes and removals wait at a gate the test opens, so a test can act between a
/// change's store call and its end (where a cluster's resync reads the store).
final class GatedStore: StateBackend {
    let inner: any StateBackend
    let gate = Mutex<(entered: Bool, open: Bool, waiting: CheckedContinuation<Void, Never>?)>((false, true, nil))

    init(_ inner: any StateBackend) { self.inner = inner }

    /// Makes the next gated call wait until `open()`.
    func close() { gate.withLock { $0 = (false, false, nil) } }
    var entered: Bool { gate.withLock { $0.entered } }
    func open() { gate.withLock { state -> CheckedContinuation<Void, Never>? in state.open = true; return state.waiting }?.resume() }

    private func pass() async {
        await withCheckedContinuation { continuation in
            let go = gate.withLock { state -> Bool in
                state.entered = true
                if state.open { return true }
                state.waiting = continuation
                return false
            }
            if go { continuation.resume() }
        }
    }

    var location: String { inner.location }
    var calls: StoreCalls { inner.calls }
    func prepare() async throws { try await inner.prepare() }
    func contexts() async throws -> [StoredContext] { try await inner.contexts() }
    func context(_ name: String) async throws -> StoredContext? { try await inner.context(name) }
    func records() async throws -> [ContextRecord] { try await inner.records() }
    func saveRegistration(_ name: String, kind: StoredContext.Kind, _ registration: IdentityRegistration) async throws {
        try await inner.saveRegistration(name, kind: kind, registration)
        await pass()
    }
    func updateRegistration(_ name: String, _ registration: IdentityRegistration) async throws {
        try await inner.updateRegistration(name, registration)
    }
    func saveSession(_ name: String, _ session: SessionInfo, generation: Int, registration: IdentityRegistration) async throws {
        try await inner.saveSession(name, session, generation: generation, registration: registration)
    }
    func importContexts(_ contexts: [StoredContext]) async throws { try await inner.importContexts(contexts) }
    func removeContext(_ name: String) async throws {
        await pass()
        try await inner.removeContext(name)
    }
    func appliedMigrations() async throws -> [String] { try await inner.appliedMigrations() }
    func saveOAuthState(_ state: String, redirectURI: String, expiresAt: Date) async throws {
        try await inner.saveOAuthState(state, redirectURI: redirectURI, expiresAt: expiresAt)
    }
    func takeOAuthState(_ state: String, now: Date) async throws -> String? { try await inner.takeOAuthState(state, now: now) }
}

/// What another daemon's change, read from the store in the middle of this daemon's own change of the same
/// context, must not do. Seen in a cluster run: an OAuth completion failed "context user-… exists already",
/// because a lease round read the new row between its write and the registry taking it over, and adopted it.
@Suite(.ownThread) struct RegistryRaceTests {
    /// A registry on a gated store; bunq's own session-server budget, which nothing here spends (the loop
    /// does not run).
    private static func registry() async throws -> (ContextRegistry, GatedStore, ScratchRegistry) {
        var gated: GatedStore?
        let scratch = try await ScratchRegistry([], policy: RenewalPolicy(), budget: SessionServerBudget(), wrapping: {
            let store = GatedStore($0)
            gated = store
            return store
        })
        return (scratch.registry, gated!, scratch)
    }

    /// Creates "ops", held at the store's gate just after the creation wrote its row; `store.open()` lets it end.
    private static func creationHeldAfterItsWrite(_ registry: ContextRegistry, _ store: GatedStore) async -> Task<UInt64, any Error> {
        store.close()
        let creation = Task { try await registry.create("ops", kind: .apiKey, IdentityRegistration(kind: .apiKey, secret: "k")) }
        #expect(await eventually(within: .seconds(10), every: .milliseconds(1)) { store.entered }, "the creation wrote its row")
        return creation
    }

    private static let record = ContextRecord(name: "ops", kind: .apiKey, session: nil, generation: 0, serverPublicKeyPEM: nil)

    @Test func aRowReadDuringItsOwnCreationIsLeftToTheCreation() async throws {
        let (registry, store, scratch) = try await Self.registry()
        defer { scratch.remove() }
        let creation = await Self.creationHeldAfterItsWrite(registry, store)
        // A lease round or a resync finds the row now.
        await registry.adoptNew(Self.record)
        store.open()
        let incarnation = try await creation.value
        #expect(await registry.names == ["ops"])
        #expect(await registry.incarnation("ops") == incarnation, "the creation owns it")
        #expect(await registry.schedule("ops") != nil)
    }

    /// Seen in a cluster run: an OAuth completion answered "Internal error", because a lease round gave back, as
    /// surplus over the daemon's fair share, the lease of the context being created, before the creation's write
    /// under that lease; another daemon took it, and the write was refused as fenced.
    @Test func aLeaseIsNotGivenBackDuringItsContextsCreation() async throws {
        let (registry, store, scratch) = try await Self.registry()
        defer { scratch.remove() }
        let creation = await Self.creationHeldAfterItsWrite(registry, store)
        #expect(await !registry.mayGiveBack("ops"), "kept while the creation writes under it")
        store.open()
        _ = try await creation.value
        #expect(await registry.mayGiveBack("ops"), "idle once created, it may go")
    }

    @Test func aRowReadDuringItsRemovalIsNotBroughtBack() async throws {
        let (registry, store, scratch) = try await Self.registry()
        defer { scratch.remove() }
        try await registry.create("ops", kind: .apiKey, IdentityRegistration(kind: .apiKey, secret: "k"))
        store.close()
        let removal = Task { try await registry.remove("ops") }
        #expect(await eventually(within: .seconds(10), every: .milliseconds(1)) { store.entered }, "the removal let go")
        // A resync that read the row just before the delete.
        await registry.adoptNew(Self.record)
        store.open()
        #expect(try await removal.value != nil)
        #expect(await registry.names.isEmpty, "removed stays removed")
        #expect(await registry.schedule("ops") == nil)
        #expect(await registry.sessions.entry("ops") == nil)
    }
}
