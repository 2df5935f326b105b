import BunqCrypto
import Foundation
import TestThreads
import Testing

@Suite(.ownThread) struct AESGCMTests {
    let aad = Array("context:provider/installation_key".utf8)

    @Test func sealThenOpenRoundTrips() throws {
        let key = try SymmetricKey.generate()
        for plaintext in [[UInt8](), Array("token".utf8), try SecureRandom.bytes(count: 100_000)] {
            let box = try AESGCM.seal(plaintext, using: key, authenticating: aad)
            #expect(box.count == plaintext.count + AESGCM.overhead)
            #expect(try AESGCM.open(box, using: key, authenticating: aad) == plaintext)
        }
    }

    @Test func everySealUsesAFreshNonce() throws {
        let key = try SymmetricKey.generate()
        let boxes = try (0..<50).map { _ in try AESGCM.seal(Array("same".utf8), using: key, authenticating: aad) }
        #expect(Set(boxes.map { Array($0[1...12]) }).count == 50)
    }

    @Test func wrongKeyAADOrTamperingFailAuthentication() throws {
        let key = try SymmetricKey.generate()
        let box = try AESGCM.seal(Array("a secret api key".utf8), using: key, authenticating: aad)
        func expectAuthenticationFailure(_ box: [UInt8], _ key: SymmetricKey, _ aad: [UInt8]) {
            #expect(throws: CryptoError(.authenticationFailed, "", openSSLReason: nil).codeOnly) {
                try CryptoErrorCode.of { _ = try AESGCM.open(box, using: key, authenticating: aad) }
            }
        }
        expectAuthenticationFailure(box, try SymmetricKey.generate(), aad)
        expectAuthenticationFailure(box, key, Array("context:other/installation_key".utf8))
        for index in [1, 13, box.count - 1] {
            var tampered = box
            tampered[index] ^= 0x80
            expectAuthenticationFailure(tampered, key, aad)
        }
    }

    @Test func malformedBoxesAndKeysAreRejected() throws {
        let key = try SymmetricKey.generate()
        let box = try AESGCM.seal(Array("x".utf8), using: key)
        #expect(throws: CryptoError(.malformedSealedBox, "").codeOnly) {
            try CryptoErrorCode.of { _ = try AESGCM.open(Array(box.prefix(20)), using: key) }
        }
        var otherVersion = box
        otherVersion[0] = 2
        #expect(throws: CryptoError(.malformedSealedBox, "").codeOnly) {
            try CryptoErrorCode.of { _ = try AESGCM.open(otherVersion, using: key) }
        }
        #expect(throws: CryptoError(.invalidSymmetricKey, "").codeOnly) {
            try CryptoErrorCode.of { _ = try SymmetricKey(bytes: [UInt8](repeating: 1, count: 16)) }
        }
        #expect("\(key)" == "SymmetricKey(redacted)")
    }

    @Test func randomTokensAreHexAndDistinct() throws {
        let tokens = try (0..<100).map { _ in try SecureRandom.hexToken() }
        #expect(Set(tokens).count == 100)
        #expect(tokens.allSatisfy { $0.count == 64 && $0.allSatisfy { "0123456789abcdef".contains($0) } })
        #expect([UInt8]([0x00, 0x0f, 0xa5, 0xff]).hexString == "000fa5ff")
    }
}

/// Compares crypto errors by code alone, so tests can assert the kind of failure without its wording.
struct CryptoErrorCode: Error, Equatable {
    let code: CryptoError.Code

    static func of(_ operation: () throws -> Void) throws {
        do {
            try operation()
        } catch let error as CryptoError {
            throw CryptoErrorCode(code: error.code)
        }
    }
}

extension CryptoError {
    var codeOnly: CryptoErrorCode { CryptoErrorCode(code: code) }
}
