"""SigV4: the notes' Transcribe presign vectors, published AWS vectors, botocore cross-checks."""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta, timezone
from unittest import mock
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from botocore import auth as botocore_auth
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given
from hypothesis import strategies as st

from workers.vendors.aws.sigv4 import (
    EMPTY_SHA256,
    PresignExpiryError,
    SigV4Error,
    canonical_headers,
    canonical_query_string,
    canonical_request,
    canonical_uri,
    credential_scope,
    presign_transcribe_url,
    sign_headers,
    signature,
    signing_key,
    string_to_sign,
    uri_encode,
)

ACCESS = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE/token+with=chars"
NOW = datetime(2024, 1, 15, 8, 30, tzinfo=UTC)
PARAMS = {"language-code": "en-US", "media-encoding": "pcm", "sample-rate": "16000"}
HOST = "transcribestreaming.us-east-1.amazonaws.com:8443"

CANONICAL_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240115%2Fus-east-1%2Ftranscribe%2Faws4_request"
    "&X-Amz-Date=20240115T083000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host"
    "&language-code=en-US&media-encoding=pcm&sample-rate=16000"
)
CANONICAL_REQUEST = (
    "GET\n/stream-transcription-websocket\n" + CANONICAL_QUERY + "\n"
    "host:transcribestreaming.us-east-1.amazonaws.com:8443\n\nhost\n"
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)
STRING_TO_SIGN = (
    "AWS4-HMAC-SHA256\n20240115T083000Z\n20240115/us-east-1/transcribe/aws4_request\n"
    "811f03f907381f9f4a580faf10207cdd7d0d7cfad19baf34911104364546ce2f"
)
SIGNATURE = "0c43e7d1d243d9b0a27c15e630dc3043649ab37e405fb412b407520f4cfd7451"
URL = (
    "wss://transcribestreaming.us-east-1.amazonaws.com:8443/stream-transcription-websocket?"
    + CANONICAL_QUERY
    + "&X-Amz-Signature="
    + SIGNATURE
)


def presign(**overrides: object) -> str:
    """The §2.4 presign call with some arguments replaced."""
    args: dict[str, object] = {
        "region": "us-east-1",
        "access_key": ACCESS,
        "secret_key": SECRET,
        "params": PARAMS,
        "now": NOW,
    }
    args.update(overrides)
    return presign_transcribe_url(**args)  # type: ignore[arg-type]


def query_of(url: str) -> list[tuple[str, str]]:
    """Decoded query pairs of a URL, in transmitted order."""
    return parse_qsl(urlsplit(url).query, keep_blank_values=True, strict_parsing=True)


# §2.4 worked vector -------------------------------------------------------------------------------


def test_worked_vector_building_blocks() -> None:
    query = [
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Credential", f"{ACCESS}/20240115/us-east-1/transcribe/aws4_request"),
        ("X-Amz-Date", "20240115T083000Z"),
        ("X-Amz-Expires", "300"),
        ("X-Amz-SignedHeaders", "host"),
        *reversed(list(PARAMS.items())),
    ]
    assert canonical_query_string(query) == CANONICAL_QUERY
    request = canonical_request(
        "GET", "/stream-transcription-websocket", CANONICAL_QUERY, {"host": HOST}, EMPTY_SHA256
    )
    assert request == CANONICAL_REQUEST
    scope = credential_scope("20240115", "us-east-1", "transcribe")
    to_sign = string_to_sign("20240115T083000Z", scope, request)
    assert to_sign == STRING_TO_SIGN
    assert (
        signature(signing_key(SECRET, "20240115", "us-east-1", "transcribe"), to_sign) == SIGNATURE
    )


def test_worked_vector_url() -> None:
    assert presign() == URL


def test_clock_in_another_zone_gives_same_url() -> None:
    assert presign(now=NOW.astimezone(timezone(timedelta(hours=-5)))) == URL


def test_session_token_vector() -> None:
    url = presign(session_token=TOKEN)
    query = CANONICAL_QUERY.replace(
        "&X-Amz-Expires=300&",
        "&X-Amz-Expires=300&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLE%2Ftoken%2Bwith%3Dchars&",
    )
    request = CANONICAL_REQUEST.replace(CANONICAL_QUERY, query)
    assert hashlib.sha256(request.encode()).hexdigest() == (
        "a297b036db295fe7155a240060f9cf0aacb2999f4547d59fbf6f8a38f3ff55f6"
    )
    sig = "bc0c824e327d7dae49c564d5d343626f55892beea7f1db4cddc68cf3f3d2a769"
    assert url == URL.split("?")[0] + "?" + query + "&X-Amz-Signature=" + sig
    assert dict(query_of(url))["X-Amz-Security-Token"] == TOKEN


def test_empty_session_token_means_none() -> None:
    assert presign(session_token="") == URL


# expiry and input checks --------------------------------------------------------------------------


@pytest.mark.parametrize("expires", [301, 3600, 0, -1, True, 300.0, "300"])
def test_expiry_outside_cap_refused(expires: object) -> None:
    with pytest.raises(PresignExpiryError):
        presign(expires=expires)
    assert issubclass(PresignExpiryError, ValueError)


def test_shorter_expiry_signed() -> None:
    url = presign(expires=60)
    assert dict(query_of(url))["X-Amz-Expires"] == "60"
    assert dict(query_of(url))["X-Amz-Signature"] != SIGNATURE
    assert dict(query_of(presign(expires=1)))["X-Amz-Expires"] == "1"


@pytest.mark.parametrize(
    "overrides",
    [
        {"region": "us-east-1.evil.com/"},
        {"region": ""},
        {"region": "US-EAST-1"},
        {"now": datetime(2024, 1, 15, 8, 30)},
        {"params": {"X-Amz-Signature": "0" * 64}},
        {"params": {"x-amz-date": "x"}},
        {"host": "evil.com/path"},
        {"host": "user@host"},
        {"scheme": "https"},
        {"path": "/p?x=1"},
        {"path": "/a b"},
        {"path": "/a/../b"},
        {"path": "relative"},
        {"access_key": ""},
        {"access_key": "AK/IA"},
        {"secret_key": ""},
    ],
)
def test_invalid_inputs_refused_without_leaking_secrets(overrides: dict[str, object]) -> None:
    with pytest.raises(SigV4Error) as caught:
        presign(session_token=TOKEN, **overrides)
    for secret in (SECRET, TOKEN):
        assert secret not in str(caught.value) and secret not in repr(caught.value)


def test_non_string_params_refused() -> None:
    with pytest.raises(TypeError):
        presign(params={"sample-rate": 16000})


def test_sign_headers_errors_do_not_leak_secrets() -> None:
    cases: list[dict[str, object]] = [
        {"now": datetime(2024, 1, 1)},
        {"url": "ftp://polly.us-east-1.amazonaws.com/"},
        {"headers": {"A": "1", "a": "2"}},
        {"url": "https://polly.us-east-1.amazonaws.com/?a=%ff"},
        {"service": "polly/x"},
        {"url": "https://polly.us-east-1.amazonaws.com:99999/"},
        {"url": "https:///v1/speech"},
    ]
    for case in cases:
        args: dict[str, object] = {
            "method": "POST",
            "url": "https://polly.us-east-1.amazonaws.com/v1/speech",
            "headers": {},
            "body": b"",
            "region": "us-east-1",
            "service": "polly",
            "access_key": ACCESS,
            "secret_key": SECRET,
            "session_token": TOKEN,
            "now": NOW,
        }
        args.update(case)
        with pytest.raises(SigV4Error) as caught:
            sign_headers(**args)  # type: ignore[arg-type]
        assert SECRET not in str(caught.value) and TOKEN not in str(caught.value)


# encoding rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ("AZaz09-_.~", "AZaz09-_.~"),
        (" ", "%20"),
        ("/", "%2F"),
        ("+", "%2B"),
        ("=", "%3D"),
        (",", "%2C"),
        (";", "%3B"),
        (":", "%3A"),
        ("&", "%26"),
        ("%", "%25"),
        ("*", "%2A"),
        ("é", "%C3%A9"),
        ("\u20ac", "%E2%82%AC"),
        ("\U0001f600", "%F0%9F%98%80"),
        ("\x00\x7f", "%00%7F"),
    ],
)
def test_uri_encode(raw: str, encoded: str) -> None:
    assert uri_encode(raw) == encoded


def test_uri_encode_keep_slash() -> None:
    assert uri_encode("/a b/c", keep_slash=True) == "/a%20b/c"


def test_query_sorting_is_by_encoded_name_then_value() -> None:
    pairs = [("b", "2"), ("a", "z"), ("B", "1"), ("a", "y"), ("a b", "x"), ("a-b", "w")]
    assert canonical_query_string(pairs) == "B=1&a=y&a=z&a%20b=x&a-b=w&b=2"


def test_comma_and_space_values_are_encoded_in_url() -> None:
    params = {
        "identify-language": "true",
        "language-options": "en-US,es-US",
        "media-encoding": "pcm",
        "sample-rate": "8000",
        "pii-entity-types": "NAME, SSN",
    }
    url = presign(params=params)
    query = urlsplit(url).query
    assert "language-options=en-US%2Ces-US" in query
    assert "pii-entity-types=NAME%2C%20SSN" in query
    assert "," not in query and " " not in query and "+" not in query
    assert dict(query_of(url))["pii-entity-types"] == "NAME, SSN"


def test_signature_is_last_and_query_otherwise_canonical() -> None:
    url = presign(params={"z": "1", "A": "2"})
    query = urlsplit(url).query
    head, _, sig = query.rpartition("&X-Amz-Signature=")
    assert len(sig) == 64 and all(c in "0123456789abcdef" for c in sig)
    assert head == canonical_query_string(query_of(url)[:-1])


def test_host_override_for_emulator() -> None:
    url = presign(host="127.0.0.1:9000", scheme="ws")
    assert url.startswith("ws://127.0.0.1:9000/stream-transcription-websocket?")
    assert dict(query_of(url))["X-Amz-Signature"] != SIGNATURE  # the host is signed


def test_canonical_headers_trim_and_merge() -> None:
    block, signed = canonical_headers([("Host", "h"), ("X-B", "  a   b\t c "), ("x-b", "d")])
    assert block == "host:h\nx-b:a b c,d\n"
    assert signed == "host;x-b"


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("", "/"),
        ("/", "/"),
        ("/v1/speech", "/v1/speech"),
        ("/a/./b/../c/", "/a/c/"),
        ("//a//b", "/a/b"),
        ("/a%20b", "/a%2520b"),
        ("/a b", "/a%20b"),
        ("/..", "/"),
    ],
)
def test_canonical_uri(path: str, canonical: str) -> None:
    assert canonical_uri(path) == canonical


# published AWS vectors ----------------------------------------------------------------------------


def test_published_signing_key_example() -> None:
    """The signing-key derivation example of the AWS general reference (IAM, 2012-02-15)."""
    key = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_published_get_vanilla_vector() -> None:
    """``get-vanilla`` of the AWS SigV4 test suite."""
    headers = sign_headers(
        "GET",
        "https://example.amazonaws.com/",
        {},
        b"",
        "us-east-1",
        "service",
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        None,
        datetime(2015, 8, 30, 12, 36, tzinfo=UTC),
    )
    assert headers == {
        "X-Amz-Date": "20150830T123600Z",
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/"
        "aws4_request, SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
    }


# botocore cross-checks ----------------------------------------------------------------------------


def frozen_botocore_clock() -> AbstractContextManager[object]:
    """Pin botocore's signing clock to NOW (botocore reads a naive UTC datetime)."""
    return mock.patch.object(
        botocore_auth, "get_current_datetime", lambda *a, **k: NOW.replace(tzinfo=None)
    )


class _EmptyHashQueryAuth(SigV4QueryAuth):
    """botocore's presigner with the payload hash forced to hash-of-empty, as Transcribe wants."""

    def payload(self, request: AWSRequest) -> str:
        return EMPTY_SHA256


def botocore_presign(params: dict[str, str], region: str, token: str | None, expires: int) -> str:
    """Presign the Transcribe URL with botocore, for comparison."""
    request = AWSRequest(
        method="GET",
        url=f"https://transcribestreaming.{region}.amazonaws.com:8443/stream-transcription-websocket",
        params=dict(params),
    )
    creds = Credentials(ACCESS, SECRET, token)
    with frozen_botocore_clock():
        _EmptyHashQueryAuth(creds, "transcribe", region, expires=expires).add_auth(request)
    return str(request.url)


def test_botocore_presign_matches_worked_vector() -> None:
    theirs = dict(query_of(botocore_presign(PARAMS, "us-east-1", None, 300)))
    assert theirs["X-Amz-Signature"] == SIGNATURE


query_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)


@given(
    params=st.dictionaries(
        query_text.filter(lambda s: not s.lower().startswith("x-amz-")), query_text, max_size=6
    ),
    region=st.sampled_from(["us-east-1", "eu-west-2", "ap-southeast-2"]),
    token=st.one_of(st.none(), st.text(min_size=1, max_size=40)),
    expires=st.integers(1, 300),
)
def test_presign_matches_botocore(
    params: dict[str, str],
    region: str,
    token: str | None,
    expires: int,
) -> None:
    ours = presign(params=params, region=region, session_token=token, expires=expires)
    theirs = botocore_presign(params, region, token, expires)
    assert dict(query_of(ours)) == dict(query_of(theirs))


def botocore_sign(
    method: str, url: str, headers: dict[str, str], body: bytes, service: str, token: str | None
) -> dict[str, str]:
    """Sign with botocore's header signer, returning the headers it produced."""
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    with frozen_botocore_clock():
        SigV4Auth(Credentials(ACCESS, SECRET, token), service, "us-east-1").add_auth(request)
    return dict(request.headers.items())


POLLY_URL = "https://polly.us-east-1.amazonaws.com/v1/speech"
POLLY_BODY = b'{"Engine":"neural","OutputFormat":"mp3","Text":"Hello","VoiceId":"Joanna"}'
POLLY_HEADERS = {"Content-Type": "application/json", "User-Agent": "voxq/0.1"}


@pytest.mark.parametrize("token", [None, TOKEN])
def test_polly_post_matches_botocore(token: str | None) -> None:
    ours = sign_headers(
        "POST",
        POLLY_URL,
        POLLY_HEADERS,
        POLLY_BODY,
        "us-east-1",
        "polly",
        ACCESS,
        SECRET,
        token,
        NOW,
    )
    theirs = botocore_sign("POST", POLLY_URL, POLLY_HEADERS, POLLY_BODY, "polly", token)
    assert ours == theirs
    assert (
        "SignedHeaders=content-type;host;x-amz-date" + (";x-amz-security-token" if token else "")
        in (ours["Authorization"])
    )
    assert "user-agent" not in ours["Authorization"]


def test_sign_headers_replaces_stale_auth_and_keeps_input() -> None:
    stale = {
        **POLLY_HEADERS,
        "authorization": "old",
        "X-Amz-Date": "19990101T000000Z",
        "x-amz-security-token": "old-token",
    }
    before = dict(stale)
    ours = sign_headers(
        "POST", POLLY_URL, stale, POLLY_BODY, "us-east-1", "polly", ACCESS, SECRET, None, NOW
    )
    assert stale == before
    assert ours == botocore_sign("POST", POLLY_URL, POLLY_HEADERS, POLLY_BODY, "polly", None)


def test_content_sha256_header_is_signed() -> None:
    ours = sign_headers(
        "POST",
        POLLY_URL,
        POLLY_HEADERS,
        POLLY_BODY,
        "us-east-1",
        "polly",
        ACCESS,
        SECRET,
        None,
        NOW,
        include_content_sha256=True,
    )
    digest = hashlib.sha256(POLLY_BODY).hexdigest()
    assert ours["X-Amz-Content-SHA256"] == digest
    theirs = botocore_sign(
        "POST",
        POLLY_URL,
        {**POLLY_HEADERS, "X-Amz-Content-SHA256": digest},
        POLLY_BODY,
        "polly",
        None,
    )
    assert ours == theirs


segment = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="/?#%"), max_size=8
) | st.sampled_from([".", "..", "", "%2F", "a%20b"])
header_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20).map(
    lambda s: f" {s}\t "
)


@given(
    segments=st.lists(segment, max_size=5),
    query=st.lists(st.tuples(query_text, query_text), max_size=4),
    headers=st.dictionaries(
        st.sampled_from(["Content-Type", "X-Custom", "Accept", "Range", "X-Amz-Meta-A"]),
        header_value,
        max_size=4,
    ),
    body=st.binary(max_size=100),
    port=st.sampled_from(["", ":443", ":8443"]),
    token=st.one_of(
        st.none(), st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)
    ),
)
def test_sign_headers_matches_botocore(
    segments: list[str],
    query: list[tuple[str, str]],
    headers: dict[str, str],
    body: bytes,
    port: str,
    token: str | None,
) -> None:
    path = "/" + "/".join(quote(s, safe="%") for s in segments)
    qs = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query)
    url = f"https://polly.us-east-1.amazonaws.com{port}{path}" + (f"?{qs}" if qs else "")
    ours = sign_headers(
        "POST", url, headers, body, "us-east-1", "polly", ACCESS, SECRET, token, NOW
    )
    assert ours == botocore_sign("POST", url, headers, body, "polly", token)
