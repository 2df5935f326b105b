import BunqCrypto
import Foundation
import TestThreads
import Testing
import TestSupport

/// Byte-exact agreement with the public PSD2 vector in Tests/Fixtures/psd2-vector.
@Suite(.ownThread) struct KnownAnswerTests {
    let installationToken = "16055df8b07491c2d901118ba1567bc62f6637eeaa3337cdeedff8e5cac8f95b"

    func vector(_ name: String) throws -> String {
        try SharedTestData.text("psd2-vector/\(name)")
    }

    @Test func psd2RegistrationSignatureVerifiesWithTheCertificateKey() throws {
        let certificate = try Certificate(pem: vector("psd2_cert.pem"))
        let signature = try vector("JsonBodySignatureEncoded.txt").trimmingCharacters(in: .whitespacesAndNewlines)
        let message = Array(try vector("StringToSign.txt").utf8)
        try certificate.publicKey().verify(base64Signature: signature, for: message)
        try RSAPublicKey(pem: vector("psd2_pub.pem")).verify(base64Signature: signature, for: message)
        #expect(try certificate.publicKey().matches(RSAPublicKey(pem: vector("psd2_pub.pem"))))
    }

    @Test func psd2StringToSignIsThePublicKeyPEMFollowedByTheToken() throws {
        let key = try RSAPrivateKey(pem: vector("client_private_key.pem"))
        let message = try PSD2RegistrationSignature.message(clientPublicKey: key.publicKey,
                                                            installationToken: installationToken)
        #expect(message == Array(try vector("StringToSign.txt").utf8))
    }

    @Test func publicKeyPEMMatchesTheVectorByteForByte() throws {
        let key = try RSAPrivateKey(pem: vector("client_private_key.pem"))
        #expect(try key.publicKey.pem() == vector("client_public_key.pem"))
    }

    @Test func requestBodySignaturesAreReproducedByteForByte() throws {
        let key = try RSAPrivateKey(pem: vector("client_private_key.pem"))
        let body = Array(try vector("body.json").utf8)
        #expect(body.last != UInt8(ascii: "\n"), "body.json must be used exactly, without a trailing newline")
        let expected = try vector("body.signature.b64").trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try key.base64Signature(for: body) == expected)
        let expectedEmpty = try vector("empty-body.signature.b64").trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try key.base64Signature(for: [UInt8]()) == expectedEmpty)
        // And they verify with the published public key.
        try RSAPublicKey(pem: vector("client_public_key.pem")).verify(base64Signature: expected, for: body)
    }

    @Test func certificateFieldsAreRead() throws {
        let certificate = try Certificate(pem: vector("psd2_cert.pem"))
        #expect(certificate.commonName == "My App PISP AISP")
        #expect(certificate.subject == "CN=My App PISP AISP,C=NL")
        #expect(certificate.issuer == "CN=My App PISP AISP,C=NL")
        #expect(certificate.psd2Roles == [.aisp, .pisp])
        #expect(try certificate.publicKey().bits == 4096)
        // notBefore 2020-05-19 11:56:24 UTC, notAfter one year later: long expired.
        #expect(certificate.notBefore == Date(timeIntervalSince1970: 1_589_889_384))
        #expect(certificate.notAfter == Date(timeIntervalSince1970: 1_621_425_384))
        #expect(!certificate.isValid(at: Date()))
        #expect(certificate.isValid(at: Date(timeIntervalSince1970: 1_600_000_000)))
        #expect(certificate.isSigned(by: certificate), "self-signed")
    }

    @Test func aesGCMMatchesWycheproofVector() throws {
        // Wycheproof aes_gcm_test.json, tcId 101 (AES-256, 96-bit IV, 128-bit tag).
        let key = try SymmetricKey(bytes: hex("cdccfe3f46d782ef47df4e72f0c02d9c7f774def970d23486f11a57f54247f17"))
        let nonce = hex("376187894605a8d45e30de51")
        let aad = hex("956846a209e087ed")
        let message = hex("e28e0e9f9d22463ac0e42639b530f42102fded75")
        let box = try AESGCMTestAccess.seal(message, key: key, nonce: nonce, aad: aad)
        #expect(box == [1] + nonce + hex("feca44952447015b5df1f456df8ca4bb4eee2ce2") + hex("082e91924deeb77880e1b1c84f9b8d30"))
        #expect(try AESGCM.open(box, using: key, authenticating: aad) == message)
    }
}

func hex(_ text: String) -> [UInt8] {
    var bytes: [UInt8] = []
    var index = text.startIndex
    while index < text.endIndex {
        let next = text.index(index, offsetBy: 2)
        bytes.append(UInt8(text[index..<next], radix: 16)!)
        index = next
    }
    return bytes
}

/// `-----BEGIN <label>-----`, assembled at run time so that no committed file contains a private-key header.
func pemBegin(_ label: String) -> String { "-----" + "BEGIN " + label + "-----" }

/// A one-block PEM text with `label` around `body`.
func pemBlock(_ label: String, _ body: String) -> String {
    pemBegin(label) + "\n" + body + "\n-----" + "END " + label + "-----\n"
}
