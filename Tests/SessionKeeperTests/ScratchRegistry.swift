import BunqCrypto
import Foundation
import SessionKeeper
import TestSupport
import Timekeeping

/// A context registry on a SQLite store of its own in a temporary directory, with API-key contexts restored
/// without a session: what the tests of the schedule, the loop and the token rule need. Their renewers stand in
/// for bunq and commit nothing, so the store stays empty; it is there because the registry owns the rows. A test
/// that must act between a store call and its end wraps the store (`wrapping`).
struct ScratchRegistry {
    let registry: ContextRegistry
    private let directory: TemporaryDirectory

    init(_ names: [String], policy: RenewalPolicy, budget: SessionServerBudget, clock: AnyClock = .continuous,
         wallClock: @escaping @Sendable () -> Date = Date.init,
         wrapping wrap: (StateStore) -> any StateBackend = { $0 }) async throws {
        directory = try TemporaryDirectory()
        let stateDirectory = directory.path("state")
        try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        let key = try MasterKey.load(credentialsDirectory: nil, stateDirectory: stateDirectory)
        registry = ContextRegistry(store: wrap(try StateStore(directory: stateDirectory, masterKey: key)), policy: policy,
                                   budget: budget, clock: clock, wallClock: wallClock)
        await add(names)
    }

    /// More contexts, restored without a session (each is bootstrapped by the loop).
    func add(_ names: [String]) async {
        await registry.restore(names.map {
            ContextRecord(name: $0, kind: .apiKey, session: nil, generation: 0, serverPublicKeyPEM: nil)
        })
    }

    func remove() { directory.remove() }
}
