<?php // demo: the real one is your WordPress tree
