<?php
/*
 * A signature-checking stand-in for the ScaleEngine API, in PHP, for tests only.
 *
 *   SANDBOX_SECRET=... BACKEND_LOG=/tmp/log php -S 127.0.0.1:PORT tests/php/backend.php
 *
 * Like the real API it reads the form field `json`, decodes it, removes `signature`, and
 * recomputes base64(HMAC-SHA256(json_encode(rest), secret)) with PHP's own json_encode: a
 * request is accepted only when the client encoded exactly as PHP does. When BACKEND_LOG is
 * set, one JSON line per request records what PHP decoded (app, inst, stream, stream_id) and
 * whether the signature was "ok" or "bad" (with a reason), so a test can see both.
 */

declare(strict_types=1);

$started = microtime(true);
header('Content-Type: application/json');

$secret = getenv('SANDBOX_SECRET');
$raw = $_POST['json'] ?? null;
$request = is_string($raw) ? json_decode($raw, true) : null;

$ok = false;
if (!is_string($secret) || $secret === '') {
    $reason = 'SANDBOX_SECRET is not set';
} elseif (!is_string($raw)) {
    $reason = 'no json form field';
} elseif (!is_array($request)) {
    $reason = 'json field does not decode to an object: ' . json_last_error_msg();
} elseif (!is_string($request['signature'] ?? null)) {
    $reason = 'no signature';
} else {
    $given = $request['signature'];
    unset($request['signature']);
    $encoded = json_encode($request);
    if ($encoded === false) {
        $reason = 'json_encode failed: ' . json_last_error_msg();
    } else {
        $expected = base64_encode(hash_hmac('sha256', $encoded, $secret, true));
        $ok = hash_equals($expected, $given);
        $reason = $ok ? '' : 'signature mismatch';
    }
}

$log = getenv('BACKEND_LOG');
if (is_string($log) && $log !== '') {
    $seen = is_array($request) ? $request : [];
    $entry = [
        'app' => $seen['app'] ?? null,
        'inst' => $seen['inst'] ?? null,
        'stream' => $seen['stream'] ?? null,
        'stream_id' => $seen['stream_id'] ?? null,
        'result' => $ok ? 'ok' : 'bad',
        'reason' => $reason,
    ];
    $line = json_encode($entry, JSON_INVALID_UTF8_SUBSTITUTE);
    file_put_contents($log, $line . "\n", FILE_APPEND | LOCK_EX);
}

if ($ok) {
    $elapsed = sprintf('%.4f seconds', microtime(true) - $started);
    echo json_encode(['message' => '', 'status' => 'success', 'handle_time' => $elapsed]);
} else {
    echo json_encode([
        'status' => 'failure',
        'code' => '0003',
        'message' => 'failed HMAC-SHA256 signature',
    ]);
}
