import BunqAPI
import BunqCrypto
import Foundation
import SessionKeeper
import TestThreads
import Testing
import TestSupport

@Suite(.ownThread) struct StateStoreTests {
    /// Recognisable secrets, so a scan of the files can prove they are not there in plaintext.
    let apiKey = "sandbox_SECRETAPIKEY0123456789abcdef"
    let token = "SESSIONTOKEN0123456789abcdef0123456789abcdef0123456789abcdef0123"

    func registration() async throws -> IdentityRegistration {
        var registration = IdentityRegistration(kind: .apiKey, secret: apiKey)
        registration.installationKeyPEM = try await RSAPrivateKey.generate().pkcs8PEM()
        registration.installationToken = "INSTALLATIONTOKEN0123456789"
        registration.serverPublicKeyPEM = "-----BEGIN PUBLIC KEY-----\nserver\n-----END PUBLIC KEY-----\n"
        registration.deviceBound = true
        return registration
    }

    @Test func contextsAndSessionsSurviveAReopen() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let stateDir = dir.path("state")
        let key = try MasterKey.load(credentialsDirectory: nil, stateDirectory: try makeDirectory(stateDir))
        let registration = try await registration()
        let session = SessionInfo(id: 7, token: token, userId: 1822179, created: Date(timeIntervalSince1970: 1_700_000_000),
                                    expiresAt: Date(timeIntervalSince1970: 1_700_604_800))
        do {
            let store = try StateStore(directory: stateDir, masterKey: key)
            try await store.saveRegistration("ops", kind: .apiKey, registration)
            try await store.saveSession("ops", session, generation: 3, registration: registration)
            try await store.saveRegistration("provider", kind: .provider, IdentityRegistration(kind: .psd2Provider))
            #expect(try await store.appliedMigrations() == ["v1", "v2", "v3", "v4"])
        }
        let reopened = try StateStore(directory: stateDir, masterKey: try MasterKey.load(credentialsDirectory: nil, stateDirectory: stateDir))
        let contexts = try await reopened.contexts()
        #expect(contexts.map(\.name) == ["ops", "provider"])
        #expect(contexts[0] == StoredContext(name: "ops", kind: .apiKey, registration: registration, session: session, generation: 3))
        #expect(contexts[1].session == nil && contexts[1].registration.kind == .psd2Provider)
        // Start-up reads light records: sessions and the (public) server key, no registration.
        let records = try await reopened.records()
        #expect(records.map(\.name) == ["ops", "provider"])
        #expect(records[0] == ContextRecord(name: "ops", kind: .apiKey, session: session, generation: 3,
                                            serverPublicKeyPEM: registration.serverPublicKeyPEM))
        #expect(try await reopened.context("provider")?.kind == .provider)
        #expect(try await reopened.context("ghost") == nil)
        try await reopened.removeContext("ops")
        #expect(try await reopened.contexts().map(\.name) == ["provider"])
    }

    @Test func oneOwnerPerStateFullSyncAndNoSilentNewKey() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let stateDir = dir.path("state")
        // The lock: a second holder is refused, naming the first's pid; released when the first goes.
        do {
            let lock = try StateLock(directory: stateDir)
            #expect(throws: StoreError.self) { _ = try StateLock(directory: stateDir) }
            do {
                _ = try StateLock(directory: stateDir)
            } catch let error as StoreError {
                #expect(error.code == .locked && error.message.contains("(pid \(getpid()))"), "\(error)")
            }
            _ = lock
        }
        _ = try StateLock(directory: stateDir)

        let store = try StateStore(directory: stateDir, masterKey: try MasterKey.load(credentialsDirectory: nil,
                                                                                       stateDirectory: stateDir))
        #expect(try await store.synchronousSetting() == 2, "synchronous = FULL: commits survive a power loss")
        // The key is gone but the state it sealed is not: an error naming both, and no new key.
        try FileManager.default.removeItem(atPath: stateDir + "/master.key")
        do {
            _ = try MasterKey.load(credentialsDirectory: nil, stateDirectory: stateDir)
            Issue.record("a new master key was made beside an existing state")
        } catch let error as StoreError {
            #expect(error.code == .masterKey && error.message.contains(stateDir + "/master.key")
                    && error.message.contains(StateStore.fileName), "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: stateDir + "/master.key"))
    }

    @Test func noSecretIsStoredInPlaintextAndFilesArePrivate() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let stateDir = dir.path("state")
        let key = try MasterKey.load(credentialsDirectory: nil, stateDirectory: try makeDirectory(stateDir))
        let registration = try await registration()
        let store = try StateStore(directory: stateDir, masterKey: key)
        try await store.saveRegistration("ops", kind: .apiKey, registration)
        try await store.saveSession("ops", SessionInfo(id: 1, token: token, userId: 2, created: Date(), expiresAt: Date()),
                             generation: 1, registration: registration)
        let secrets = [apiKey, token, "INSTALLATIONTOKEN0123456789", "BEGIN " + "PRIVATE KEY",
                       String(registration.installationKeyPEM!.split(separator: "\n")[1])]
        let files = try FileManager.default.contentsOfDirectory(atPath: stateDir)
        #expect(files.contains(StateStore.fileName) && files.contains(StateStore.fileName + "-wal"))
        for file in files {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: stateDir + "/" + file))
            for secret in secrets {
                #expect(bytes.range(of: Data(secret.utf8)) == nil, "\(file) holds a secret in plaintext")
            }
            #expect(try mode(stateDir + "/" + file) & 0o077 == 0, "\(file) must be private")
        }
        #expect(try mode(stateDir) & 0o777 == 0o700)
        #expect(try mode(stateDir + "/master.key") & 0o777 == 0o600)
    }

    @Test func aWrongMasterKeyIsRefusedAtOpenWithoutLeaking() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let stateDir = try makeDirectory(dir.path("state"))
        let key = try SymmetricKey.generate()
        let store = try StateStore(directory: stateDir, masterKey: key)
        try await store.saveRegistration("ops", kind: .apiKey, try await registration())
        // The key check refuses another key at once, naming the key's source and the state.
        do {
            _ = try StateStore(directory: stateDir, masterKey: try SymmetricKey.generate(), keySource: "/etc/other.key")
            Issue.record("opened with the wrong key")
        } catch let error as StoreError {
            #expect(error.code == .masterKey && error.message.contains("/etc/other.key")
                    && error.message.contains(StateStore.fileName), "\(error)")
            #expect(!"\(error)".contains(apiKey))
        }
        // The right key still opens it.
        #expect(try await StateStore(directory: stateDir, masterKey: key).context("ops") != nil)
    }

    @Test func theMasterKeyComesFromTheCredentialFirst() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let credentials = try makeDirectory(dir.path("credentials"))
        let stateDir = try makeDirectory(dir.path("state"))
        let hex = String(repeating: "ab", count: 32)
        _ = try dir.write("credentials/master-key", hex + "\n")
        let key = try MasterKey.load(credentialsDirectory: credentials, stateDirectory: stateDir)
        #expect(key.rawBytes == [UInt8](repeating: 0xAB, count: 32))
        #expect(!FileManager.default.fileExists(atPath: stateDir + "/master.key"), "no key file when a credential exists")
        _ = try dir.write("credentials/master-key", "too short")
        #expect(throws: StoreError.self) { try MasterKey.load(credentialsDirectory: credentials, stateDirectory: stateDir) }
        // A generated key file that others can read is refused.
        _ = try MasterKey.load(credentialsDirectory: nil, stateDirectory: stateDir)
        chmod(stateDir + "/master.key", 0o644)
        #expect(throws: StoreError.self) { try MasterKey.load(credentialsDirectory: nil, stateDirectory: stateDir) }
    }

    @Test func sealedValuesAreBoundToTheirRow() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let stateDir = try makeDirectory(dir.path("state"))
        let key = try SymmetricKey.generate()
        let store = try StateStore(directory: stateDir, masterKey: key)
        try await store.saveRegistration("a", kind: .apiKey, try await registration())
        try await store.saveRegistration("b", kind: .apiKey, IdentityRegistration(kind: .apiKey, secret: "other"))
        // Swap the sealed registrations between rows behind the store's back: both must fail to open.
        try Command.check(["sqlite3", store.path, """
            UPDATE context SET registration = (SELECT registration FROM context WHERE name = 'a') WHERE name = 'b';
            """])
        await #expect(throws: StoreError.self) { _ = try await store.contexts() }
    }

    func makeDirectory(_ path: String) throws -> String {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        return path
    }

    func mode(_ path: String) throws -> mode_t {
        var info = stat()
        guard stat(path, &info) == 0 else { throw StoreError(.permissions, "stat \(path)") }
        return info.st_mode
    }
}
