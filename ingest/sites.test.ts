import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseApiKeys } from './sites.js';

/** The keys of entries that must parse without a problem. */
function keys(entries: string[], defaultSiteTimeZone = 'UTC') {
  const parsed = parseApiKeys(entries, defaultSiteTimeZone);
  assert.deepEqual(parsed.problems, [], entries.join(','));
  return parsed.keys;
}

/** The one problem `entries` have; it must never show a key. */
function problem(entries: string[], defaultSiteTimeZone = 'UTC'): string {
  const parsed = parseApiKeys(entries, defaultSiteTimeZone);
  assert.equal(parsed.problems.length, 1, `${entries.join(',')}: ${parsed.problems.join('; ')}`);
  const [text] = parsed.problems as [string];
  assert.doesNotMatch(text, /secret/, 'a problem names entries by position, never by key');
  return text;
}

describe('parseApiKeys', () => {
  test('bare keys (the form before sites) belong to the default site, in its zone', () => {
    assert.deepEqual(keys(['secret-1', 'secret-2'], 'Europe/Lisbon'), [
      { key: 'secret-1', site: 'default', timeZone: 'Europe/Lisbon' },
      { key: 'secret-2', site: 'default', timeZone: 'Europe/Lisbon' },
    ]);
  });

  test('KEY=SITE and KEY=SITE@ZONE; a site without a zone is in UTC', () => {
    assert.deepEqual(
      keys(['secret-1=shop@Europe/Berlin', 'secret-2=blog@Asia/Kathmandu', 'secret-3=docs']),
      [
        { key: 'secret-1', site: 'shop', timeZone: 'Europe/Berlin' },
        { key: 'secret-2', site: 'blog', timeZone: 'Asia/Kathmandu' },
        { key: 'secret-3', site: 'docs', timeZone: 'UTC' },
      ],
    );
  });

  test('mixed forms: bare keys and named sites side by side', () => {
    assert.deepEqual(
      keys(['k1=shop@Europe/Berlin', 'k2=blog@Asia/Kathmandu', 'k3'], 'Asia/Tokyo'),
      [
        { key: 'k1', site: 'shop', timeZone: 'Europe/Berlin' },
        { key: 'k2', site: 'blog', timeZone: 'Asia/Kathmandu' },
        { key: 'k3', site: 'default', timeZone: 'Asia/Tokyo' },
      ],
    );
  });

  test('the default site named explicitly takes DEFAULT_SITE_TIME_ZONE, or must agree with it', () => {
    assert.deepEqual(keys(['k1', 'k2=default', 'k3=default@Asia/Tokyo'], 'Asia/Tokyo'), [
      { key: 'k1', site: 'default', timeZone: 'Asia/Tokyo' },
      { key: 'k2', site: 'default', timeZone: 'Asia/Tokyo' },
      { key: 'k3', site: 'default', timeZone: 'Asia/Tokyo' },
    ]);
    const text = problem(['secret-1', 'secret-2=default@Europe/Berlin'], 'UTC');
    assert.match(text, /^API_KEYS entry 2 of 2: /);
    assert.match(text, /Europe\/Berlin/);
    assert.match(text, /DEFAULT_SITE_TIME_ZONE is UTC/);
  });

  test('several keys of one site (rotation) with the same zone', () => {
    assert.deepEqual(
      keys(['old=shop@Europe/Berlin', 'new=shop@Europe/Berlin', 'a=blog', 'b=blog']),
      [
        { key: 'old', site: 'shop', timeZone: 'Europe/Berlin' },
        { key: 'new', site: 'shop', timeZone: 'Europe/Berlin' },
        { key: 'a', site: 'blog', timeZone: 'UTC' },
        { key: 'b', site: 'blog', timeZone: 'UTC' },
      ],
    );
    assert.deepEqual(keys(['a=docs@UTC', 'b=docs']), [
      { key: 'a', site: 'docs', timeZone: 'UTC' },
      { key: 'b', site: 'docs', timeZone: 'UTC' },
    ]);
  });

  test('keys of one site that disagree on its zone are refused, naming both entries', () => {
    const text = problem(['secret-1=shop@Europe/Berlin', 'x=blog', 'secret-2=shop@Europe/Paris']);
    assert.match(text, /^API_KEYS entries 1 and 3 give site shop different time zones/);
    assert.match(text, /Europe\/Berlin, Europe\/Paris/);
    // No zone means UTC: leaving it off a rotated key would move the site's days once the
    // old key is removed.
    assert.match(
      problem(['secret-1=shop@Europe/Berlin', 'secret-2=shop']),
      /entries 1 and 2 give site shop different time zones \(Europe\/Berlin, UTC\)/,
    );
  });

  test('a duplicate key is refused, whatever sites it names', () => {
    for (const entries of [
      ['secret-1', 'secret-1'],
      ['secret-1=shop', 'secret-2', 'secret-1=blog'],
      ['secret-1=shop@Europe/Berlin', 'secret-1=shop@Europe/Berlin'],
    ]) {
      assert.match(problem(entries), /^API_KEYS entries 1 and \d are the same key$/);
    }
  });

  test('a site name that does not match SITE_NAME is refused, naming it', () => {
    for (const site of ['Shop', '-shop', '.shop', 'a b', 'shop/eu', 'x'.repeat(64), 'çafé']) {
      const text = problem([`secret-1=${site}`]);
      assert.match(text, /^API_KEYS entry 1 of 1: site /, site);
      assert.ok(text.includes(JSON.stringify(site)), text);
    }
    assert.match(problem(['secret-1=@Europe/Berlin']), /site "" is not a site name/);
    assert.deepEqual(keys(['k=a', 'l=shop-2.eu_x', `m=${'x'.repeat(63)}`]).length, 3);
  });

  test('an unknown time zone is refused, naming it', () => {
    for (const zone of ['Mars/Olympus', 'Europe/', 'Berlin', '+01:00', 'UTC@UTC']) {
      const text = problem([`secret-1=shop@${zone}`]);
      assert.match(text, /^API_KEYS entry 1 of 1: /, zone);
      assert.ok(text.includes(JSON.stringify(zone)), text);
      assert.match(text, /IANA time zone/);
    }
  });

  test('malformed entries are refused: no key before =, nothing after @', () => {
    assert.match(problem(['=shop']), /^API_KEYS entry 1 of 1: no key before "="/);
    assert.match(problem([' =shop@UTC']), /no key before "="/);
    assert.match(problem(['secret-1=shop@']), /^API_KEYS entry 1 of 1: no time zone after "@"/);
  });

  test('every problem is reported, each naming its entry', () => {
    const parsed = parseApiKeys(
      ['secret-1=Shop', 'secret-2=shop@Nowhere/Land', 'secret-3', 'secret-3', '=x'],
      'UTC',
    );
    assert.deepEqual(
      parsed.problems.map((text) => /^API_KEYS entr(?:y|ies) (\d+(?: and \d+)?)/.exec(text)?.[1]),
      ['1', '2', '3 and 4', '5'],
    );
  });

  test('the last = separates the key, and a trailing = belongs to a bare key (base64 padding)', () => {
    assert.deepEqual(keys(['c2VjcmV0LTE=', 'c2VjcmV0LTI==', 'c2VjcmV0LTM==shop@Europe/Berlin']), [
      { key: 'c2VjcmV0LTE=', site: 'default', timeZone: 'UTC' },
      { key: 'c2VjcmV0LTI==', site: 'default', timeZone: 'UTC' },
      { key: 'c2VjcmV0LTM=', site: 'shop', timeZone: 'Europe/Berlin' },
    ]);
  });

  test('a key may hold @ and other characters; blanks around = and @ are ignored', () => {
    assert.deepEqual(keys(['k@1=shop', 'k@2', 'k3 = blog @ Asia/Kathmandu']), [
      { key: 'k@1', site: 'shop', timeZone: 'UTC' },
      { key: 'k@2', site: 'default', timeZone: 'UTC' },
      { key: 'k3', site: 'blog', timeZone: 'Asia/Kathmandu' },
    ]);
  });

  test('no entries: no keys', () => {
    assert.deepEqual(keys([]), []);
  });
});
