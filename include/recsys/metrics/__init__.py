"""Offline evaluation of implicit-feedback recommenders: accuracy, beyond-accuracy, slices, CIs.

This docstring is the single place where the pipeline's offline metrics are defined (the README
section "Offline metrics" is a summary of this text). :mod:`.ranking` computes the per-user and
beyond-accuracy metrics of one model (:mod:`.beyond` holds the beyond-accuracy pieces),
:mod:`.slices` the user and item slices, :mod:`.bootstrap` the paired intervals,
:mod:`.evaluation` scores several models on one holdout and builds ``eval/report.json``, and
:mod:`.holdout` reads the evaluate stage's inputs. Everything is computed with NumPy array
operations: there is no Python loop over users or items (only over the requested cut-offs
``ks``, over rank columns, and over fixed-size blocks of users or bootstrap samples).

Inputs
------
``top_items``
    ``int`` array of shape ``(n_users, N)``. Row ``u`` holds the item indices
    recommended to user ``u`` in rank order (rank 1 first). Rows with fewer than
    ``N`` recommendations are right-padded with ``-1``; a row of only ``-1`` means
    the user received no recommendations. Items are assumed to be unique within a
    row (duplicates are *not* checked for; a duplicated relevant item would be
    counted as two hits).
``relevant``
    ``scipy.sparse.csr_matrix`` of shape ``(n_users, n_items)`` holding the holdout
    interactions. Binary relevance: every stored entry with a nonzero value is a
    relevant item; the stored value itself is ignored. ``|rel_u|`` is the number of
    relevant items of user ``u``.
``item_popularity`` / ``n_train_users`` (optional)
    ``pop_i`` = number of distinct *training* users who interacted with item ``i`` and the
    number of training users; they define novelty.
``item_features`` (optional)
    ``(n_items, d)`` dense or sparse matrix of item feature vectors; it enables intra-list
    diversity. The pipeline has no item features today, so ``ild@k`` is absent from its report.

Which users are averaged
------------------------
* Users whose ``relevant`` row is empty are **excluded** from every average and
  from the aggregate metrics; they are counted in ``n_users_no_holdout``.
* Users with holdout items but no recommendations (row of ``-1``) are **included**
  and score 0 on every accuracy metric; they are counted in ``n_users_no_recs``.
* All other users with holdout items are included. ``n_users_evaluated`` is the
  number of users with a nonempty ``relevant`` row (it includes ``n_users_no_recs``).

Per-user accuracy metrics (rank ``r`` starts at 1; ``hit(r)`` is 1 when the item
at rank ``r`` is relevant; only real recommendations count, so when ``k`` exceeds
``N`` or the catalog size, the missing positions are simply misses while the
denominators below are unchanged)
------------------------------------------------------------------------------------
* ``hits@k``       = sum_{r<=k} hit(r)
* ``precision@k``  = hits@k / k. The denominator is ``k`` itself, **not** the number
  of recommendations actually shown, so a user with fewer than ``k``
  recommendations (or ``k > N``) cannot reach 1.
* ``recall@k``     = hits@k / |rel_u|
* ``ndcg@k``       = DCG@k / IDCG@k, with binary gain and discount
  1 / log2(r + 1): ``DCG@k = sum_{r<=k} hit(r) / log2(r + 1)`` and
  ``IDCG@k = sum_{r=1}^{min(k, |rel_u|)} 1 / log2(r + 1)``.
* ``map@k``        = AP@k = (sum_{r<=k, hit(r)=1} precision@r) / min(k, |rel_u|).
  (``map@k`` in the summary is the mean of AP@k over evaluated users.)
* ``mrr@k``        = 1 / (rank of the first hit) if that rank is <= k, else 0.
* ``hit_rate@k``   = 1 if hits@k > 0 else 0.

The summary value of every per-user metric is its arithmetic mean over the
``n_users_evaluated`` users (macro average); it is NaN when no user is evaluated.
Ties in the model's scores are the recommender's business: the metrics see one ranked
list per user and never re-order it.

Beyond-accuracy metrics (over the top-k lists of the evaluated users only)
---------------------------------------------------------------------------
* ``coverage@k``   = |distinct items in the top-k lists| / ``n_catalog`` (``n_catalog``
  defaults to ``relevant.shape[1]``). ``-1`` padding is not an item.
* exposure: ``e_i@k`` = number of top-k slots (over evaluated users) holding item ``i``,
  for every item of the catalog, ``i = 0 .. L-1`` with ``L = max(n_catalog, largest
  recommended index + 1)``; items never recommended have ``e_i = 0``.
* ``gini@k``       = Gini coefficient of the exposure vector over the whole catalog:
  with ``e`` sorted ascending, ``G = sum_{j=1}^{L} (2j - L - 1) e_(j) / (L * sum_j e_j)``.
  0 = every catalog item recommended equally often; ``(L - 1) / L`` = one item takes every
  slot. NaN when there are no slots at all.
* ``novelty@k``    = per user, the mean self-information of their top-k recommended items,
  ``-log2(p_i)`` with ``p_i = max(pop_i, 1) / n_train_users`` (the share of training users
  who know item ``i``; items no training user touched count as known by one, so the value
  stays finite, at most ``log2(n_train_users)``). Per-user value NaN when the user got no
  recommendation; the summary is the mean over evaluated users with >= 1 recommendation.
* ``ild@k``        = intra-list diversity, per user the mean cosine distance
  ``1 - cos(f_i, f_j)`` over all unordered pairs of distinct positions in the top-k list
  (``m(m-1)/2`` pairs for ``m`` shown items). Items with an all-zero feature vector (or
  beyond the feature matrix) are at distance 1 from everything. NaN per user with fewer
  than 2 items; summary = mean over users with >= 2 items. Only computed with
  ``item_features``; otherwise the key is absent (the pipeline notes that it was skipped).
* popularity-bias curve@k: sort the catalog by exposure ``e_i@k`` descending; for each share
  ``s`` in 10%, 20%, ..., 100% of all top-k slots, ``items(s)`` = the smallest number of
  distinct items whose exposures sum to at least ``ceil(s * total slots)``. A popularity
  recommender gives a flat, low curve; ``items(1.0)`` = the number of distinct recommended
  items (``coverage@k * n_catalog``).

Slices (see :func:`evaluate_models` and :func:`user_slice_labels`)
-------------------------------------------------------------------
* ``activity``: from the user's number of distinct *training* items ``c_u`` (the row length
  of the training matrix, what the model saw): ``cold`` (``c_u = 0``: no training events,
  unknown to the model), ``heavy`` (``c_u >= T``), ``light`` (``1 <= c_u < T``). ``T`` is the
  ``heavy_quantile`` (config ``eval_heavy_quantile``, default 0.8) quantile of ``c_u`` over
  all training users, rounded up to an integer: roughly the top 20% most active users.
* ``user``: ``new`` when the user's first training event is at or after ``cutoff -
  new_user_days`` (config ``eval_new_user_days``; the cutoff is the train/holdout split time),
  else ``returning``. Cold users are new by definition; they are reported in
  ``activity=cold`` and not in the ``user`` slices.
* ``items``: ``head`` = the smallest set of most popular items (by ``pop_i``, ties by lower
  index) whose popularity adds up to at least ``head_share`` (config ``eval_head_share``,
  default 0.5) of all training (user, item) pairs; every other item, including items that
  no training user touched, is ``tail``. ``items=head`` re-scores the same recommendation
  lists with the relevant set restricted to head holdout items (``items=tail`` likewise):
  users with no head (tail) holdout item drop out of that slice, so ``recall@k`` there is
  "the share of the user's head (tail) holdout items that were retrieved".
* The headline ``metrics`` are over **warm** holdout users (known to the candidate, i.e. with
  training events): the same population as before slices existed, so the gate metric stays
  comparable across releases. Cold holdout users get each model's own fallback list (the
  candidate's and the champion's popularity fallback, the baselines' own lists) and are
  scored only in ``activity=cold``. ``activity=light|heavy``, ``user=*`` and ``items=*`` are
  over warm users. A slice reports ``n_users`` and the mean of every per-user metric; the
  aggregate metrics (coverage, Gini, curve) are not sliced.

Paired bootstrap (:func:`paired_bootstrap`)
-------------------------------------------
Per-user values ``a_u`` and ``b_u`` of two models on the same users; ``d_u = a_u - b_u``.
``n_boot`` resamples of the users with replacement (``n`` draws each, numpy ``Generator``
seeded with ``seed``; the same resamples for every metric of a comparison, and for every
comparison of one evaluation: they are drawn once, :func:`paired_bootstrap_tables`); the CI is the
percentile interval ``[q_{(1-c)/2}, q_{(1+c)/2}]`` (numpy's default linear interpolation)
of the resampled mean differences, ``mean_diff`` is the observed mean of ``d``. Pairs with
a NaN on either side are dropped first (``n_users`` counts the pairs used).

Baselines (``scoring.baselines``; recent counts from :func:`holdout.holdout_inputs`)
----------------------------------------------------------------------------------
``popularity``: items by ``pop_i`` over the whole training period. ``recent_popularity``:
items by the number of distinct users with a training event in the last ``recent_days``
before the cutoff (config ``recent_days``), ties (including the items nobody touched
recently) by global popularity, then lower index. Every model gets the same holdout and the
same seen-item filter: each user's training items are removed and the next items move up.

Implementation
--------------
Membership of ``top_items[u, r]`` in row ``u`` of ``relevant`` is decided for all
``(u, r)`` at once with one element lookup ``csr[u, item]`` into the canonical (sorted,
deduplicated, no explicit zeros) CSR: scipy's C loop binary-searches each short row. The per-user
metrics are then accumulated from the coordinates of the hits with ``np.bincount``;
every k reuses that one membership pass. Exposure, novelty and diversity are accumulated
incrementally over the rank columns between consecutive k. Peak extra memory is a few
``int64``/``float64`` arrays of shape ``(n_evaluated_users, min(N, max(ks)))`` (about 80 MB
each for 100k users x 100). ``bench/evaluation.py`` times it against implicit.

How this differs from other libraries
-------------------------------------
* ``implicit.evaluation.ranking_metrics_at_k`` (implicit 0.7.3; the ``.pyx`` source
  is not shipped in the wheel, this was read from the upstream source and checked
  against the installed binary in ``tests/unit/metrics/test_ranking.py``): it calls
  ``model.recommend(..., N=K)`` itself (filtering the training items) for a single
  ``K``, and silently skips users without test items, reporting no user counts.
  Its ``"precision"`` is ``sum_u hits@K / sum_u min(K, |rel_u|)`` -- both a different
  denominator (``min(K, |rel_u|)`` instead of ``K``) and a micro average (ratio of
  sums, not a mean over users); it is therefore neither our precision@K nor our
  recall@K. Its ``"map"`` normalizes AP by ``min(K, |rel_u|)`` and its ``"ndcg"``
  uses binary gain, 1/log2(r + 1) and an ideal DCG over ``min(K, |rel_u|)`` items,
  both macro-averaged over users with test items: these match our ``map@K`` and
  ``ndcg@K`` when given the same recommendation lists. It also reports a truncated
  ``"auc"`` (not provided here) and no recall, MRR, hit rate, coverage or any
  beyond-accuracy metric.
* Microsoft Recommenders (``recommenders.evaluation.python_evaluation``): works on
  pandas DataFrames and averages over the users present in *both* the truth and the
  prediction frames, so users with holdout but no recommendations are dropped
  instead of scoring 0. ``precision_at_k`` divides by ``k`` and ``recall_at_k`` by
  the number of true items (same as here). In its current source ``map_at_k``
  divides by ``min(|rel_u|, k)`` (same as here) while ``map`` divides by ``|rel_u|``;
  older releases differ, so check the installed version. ``ndcg_at_k`` defaults to
  a natural-log discount, which gives the same ratio DCG/IDCG as log2. Its ``novelty``
  uses the *choice* model ``-log2(interactions_i / all interactions)`` averaged over all
  recommendation slots (micro); ours uses the share of users who know the item and a mean
  per user (macro). Its ``diversity`` is ``1 - mean pairwise similarity`` like our ILD but
  defaults to item co-occurrence similarity (feature cosine is an option). Its
  ``catalog_coverage`` divides by the distinct training items; it has no Gini (its
  ``distributional_coverage`` is the Shannon entropy of exposure).
* ranx: ``precision@k`` divides by ``k`` (same as here) and ``ndcg@k`` (Jarvelin
  formulation, binary judgments) matches ours, but ``map@k`` divides the sum of
  precisions by the total number of relevant documents ``|rel_u|``, not by
  ``min(k, |rel_u|)``, so ranx's ``map@k`` is <= ours when ``|rel_u| > k``. Queries of
  the qrels that the run lacks have to be reconciled by the caller (``evaluate``'s
  ``make_comparable`` option adds them with empty results, so they score 0 as here). ranx
  has no beyond-accuracy metrics, and its ``compare`` offers paired significance tests
  (Student's t, Fisher's randomization) rather than a bootstrap interval.
"""
