"""Training windows instead of every prefix, for models with a loss at every position.

RecBole's `SequentialDataset` turns a user's sequence of n items into n - 1 samples, one per prefix (history of
at most `MAX_ITEM_LIST_LENGTH` items -> next item); leave-one-out then takes the last two as validation and test
samples. A model that predicts the next item at every position of its history (`model/item_causal.py`) learns
all of a prefix's targets from the longest prefix that contains it, so the shorter ones only repeat work.
"""

import numpy as np
from recbole.data.dataset import SequentialDataset


class WindowedSequentialDataset(SequentialDataset):
    """`SequentialDataset` whose training samples are non-overlapping windows when `train_windows` is set.

    Counting back from each user's last training sample (the validation and test samples are kept as they
    are), every `MAX_ITEM_LIST_LENGTH`-th prefix is kept: the windows' per-position targets then cover every
    training item exactly once (Beauty: ~24k windows instead of ~154k prefixes). With `train_windows` False
    this is RecBole's dataset unchanged. Validation and test are identical either way.
    """

    def data_augmentation(self):
        super().data_augmentation()
        if not self.config["train_windows"]:
            return
        users = self.inter_feat[self.uid_field].numpy()  # sorted by user, then time
        last_of_user = np.r_[users[1:] != users[:-1], True]
        group_end = np.flatnonzero(last_of_user)
        group_start = np.r_[0, group_end[:-1] + 1]
        lengths = group_end - group_start + 1
        rows_after = np.repeat(group_end, lengths) - np.arange(len(users))  # later samples of the same user
        stride = self.config["MAX_ITEM_LIST_LENGTH"]
        keep = (rows_after < 2) | ((rows_after - 2) % stride == 0)  # valid, test, window ends
        self.logger.info(f"train_windows: kept {int(keep.sum())} of {len(keep)} sequential samples")
        self.inter_feat = self.inter_feat[np.flatnonzero(keep)]
